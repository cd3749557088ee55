"""`vdsm.network.ipwrapper`: the host's links, and iproute2 commands.

`Link` describes a link as VDSM does (address, index, type, mtu, name,
qdisc, state, master...); `Link._detectType(name)` tells a bridge, bond,
VLAN, veth, tun, Open vSwitch port, team, macvlan, dummy, loopback, VF or
NIC apart by the driver the kernel reports for it (SIOCETHTOOL), as on
VDSM. `getLink`/`getLinks` read `ip -details -json link`. The other
functions run `ip` and raise IPRoute2Error (NoDevice / AlreadyExists) with
its exit code and stderr lines.
"""
from __future__ import annotations

import errno
import os

from vdsm.common.cmdutils import CommandPath

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

_IP_BINARY = CommandPath("ip", "/sbin/ip")
DUMMY_BRIDGE = ";vdsmdummy;"

# Linux ABI: SIOCETHTOOL with ETHTOOL_GDRVINFO fills a struct ethtool_drvinfo
# (u32 cmd, then char driver[32], ...) through the pointer in struct ifreq.
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196
_IFREQ_SIZE = 40
# Interface flags (linux/if.h) by the names `ip` prints.
IFF = {
    "UP": 0x1, "BROADCAST": 0x2, "DEBUG": 0x4, "LOOPBACK": 0x8, "POINTOPOINT": 0x10,
    "NOTRAILERS": 0x20, "RUNNING": 0x40, "NOARP": 0x80, "PROMISC": 0x100, "ALLMULTI": 0x200,
    "MASTER": 0x400, "SLAVE": 0x800, "MULTICAST": 0x1000, "PORTSEL": 0x2000,
    "AUTOMEDIA": 0x4000, "DYNAMIC": 0x8000, "LOWER_UP": 0x10000, "DORMANT": 0x20000, "ECHO": 0x40000,
}  # fmt: skip


class LinkType:
    NIC = "nic"
    VLAN = "vlan"
    BOND = "bond"
    BRIDGE = "bridge"
    LOOPBACK = "loopback"
    MACVLAN = "macvlan"
    DUMMY = "dummy"
    TUN = "tun"
    OVS = "openvswitch"
    TEAM = "team"
    VETH = "veth"
    VF = "vf"
    IPOIB = "ipoib"


def driver_name(device: str) -> str:
    """The kernel driver behind `device`. OSError ENODEV when there is no
    such device, EOPNOTSUPP when it reports no driver (the loopback)."""
    import array
    import fcntl
    import socket
    import struct

    name = device.encode()
    if len(name) > 15:
        raise OSError(errno.ENODEV, f"{device}: not a link name")
    info = array.array("B", struct.pack("=I", ETHTOOL_GDRVINFO) + bytes(_DRVINFO_SIZE - 4))
    request = struct.pack("16sP", name, info.buffer_info()[0])
    request += bytes(_IFREQ_SIZE - len(request))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    return info[4:36].tobytes().split(b"\0", 1)[0].decode("ascii", "replace")


def _any_fnmatch(name: str, patterns: Sequence[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in patterns if pattern)


def _config_patterns(key: str) -> list[str]:
    from vdsm.common.config import config

    return config.get("vars", key).split(",")


class Link:
    """One link, as VDSM describes it."""

    def __init__(
        self, address: str | None, index: int, linkType: str, mtu: int, name: str, qdisc: str | None,  # noqa: N803
        state: str, vlanid: int | None = None, vlanprotocol: str | None = None, master: str | None = None,
        device: str | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        self.address = address
        self.index = index
        self.type = linkType
        self.mtu = mtu
        self.name = name
        self.qdisc = qdisc
        self.state = state
        self.master = master
        if vlanid is not None:
            self.vlanid = vlanid
        if vlanprotocol is not None:
            self.vlanprotocol = vlanprotocol
        if device is not None:
            self.device = device
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{self.index}: {self.name}({self.type}) {self.address}"

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> Link:  # noqa: N802 (VDSM's name)
        data = dict(data)
        data["linkType"] = data.pop("type") if "type" in data else cls._detectType(data["name"])
        return cls(**data)

    @staticmethod
    def _detectType(name: str) -> str:  # noqa: N802 (VDSM's name)
        """The LinkType of device `name`, from its driver."""
        try:
            driver = driver_name(name)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                return LinkType.LOOPBACK if name == "lo" else LinkType.DUMMY
            raise
        if driver in (LinkType.BRIDGE, LinkType.MACVLAN, LinkType.TUN, LinkType.OVS, LinkType.TEAM, LinkType.VETH):
            return driver
        if driver == "bonding":
            return LinkType.BOND
        if "vlan" in driver.lower():
            return LinkType.VLAN
        if os.path.exists(f"/sys/class/net/{name}/device/physfn/"):
            return LinkType.VF
        return LinkType.NIC

    def isBOND(self) -> bool:  # noqa: N802
        return self.type == LinkType.BOND

    def isBRIDGE(self) -> bool:  # noqa: N802
        return self.type == LinkType.BRIDGE

    def isDUMMY(self) -> bool:  # noqa: N802
        return self.type == LinkType.DUMMY

    def isNIC(self) -> bool:  # noqa: N802
        return self.type == LinkType.NIC

    def isVETH(self) -> bool:  # noqa: N802
        return self.type == LinkType.VETH

    def isVF(self) -> bool:  # noqa: N802
        return self.type == LinkType.VF

    def isVLAN(self) -> bool:  # noqa: N802
        return self.type == LinkType.VLAN

    def isMACVLAN(self) -> bool:  # noqa: N802
        return self.type == LinkType.MACVLAN

    def isIPoIB(self) -> bool:  # noqa: N802
        return self.type == LinkType.IPOIB

    def isFakeNIC(self) -> bool:  # noqa: N802
        """A dummy, veth or macvlan that vdsm.conf's `fake_nics` shows as a NIC."""
        if self.isDUMMY() or self.isVETH() or self.isMACVLAN():
            return _any_fnmatch(self.name, _config_patterns("fake_nics"))
        return False

    def isNICLike(self) -> bool:  # noqa: N802
        return self.isNIC() or self.isVF() or self.isFakeNIC() or self.isIPoIB()

    def isHidden(self) -> bool:  # noqa: N802
        """Whether vdsm.conf's hidden_* patterns hide this link."""
        if self.isVLAN():
            return _any_fnmatch(self.name, _config_patterns("hidden_vlans"))
        if self.isNICLike():
            return _any_fnmatch(self.name, _config_patterns("hidden_nics"))
        if self.isBOND():
            return _any_fnmatch(self.name, _config_patterns("hidden_bonds"))
        if self.isBRIDGE():
            return self.name == DUMMY_BRIDGE
        return False

    @property
    def oper_up(self) -> bool:
        return bool(getLink(self.name).flags & IFF["RUNNING"])

    def get_promisc(self) -> bool:
        return bool(getLink(self.name).flags & IFF["PROMISC"])

    def set_promisc(self, value: bool) -> None:
        linkSet(self.name, ["promisc", "on" if value else "off"])

    promisc = property(get_promisc, set_promisc, None, "Link promiscuity flag")


def _link_info(entry: dict[str, Any]) -> dict[str, Any]:
    """VDSM's description of a link from one object of `ip -d -j link`."""
    flags = 0
    for flag in entry.get("flags", ()):
        flags |= IFF.get(flag, 0)
    if flags & IFF["LOWER_UP"] and flags & IFF["UP"]:
        flags |= IFF["RUNNING"]  # ip prints LOWER_UP where the kernel also has RUNNING
    info: dict[str, Any] = {
        "address": entry.get("address"),
        "flags": flags,
        "index": entry.get("ifindex"),
        "mtu": entry.get("mtu"),
        "name": entry.get("ifname"),
        "qdisc": entry.get("qdisc"),
        "state": "up" if flags & IFF["UP"] else "down",
    }
    kind = entry.get("linkinfo", {}).get("info_kind")
    if kind:
        info["type"] = kind
    if entry.get("link") or entry.get("link_index"):
        info["device"] = entry.get("link")
    if entry.get("master"):
        info["master"] = entry["master"]
    if kind == "vlan":
        info["vlanid"] = entry.get("linkinfo", {}).get("info_data", {}).get("id")
    return info


def _ip_links(device: str | None = None) -> list[dict[str, Any]]:
    import json
    import subprocess

    command = [_IP_BINARY.cmd, "-details", "-json", "link", "show"] + (["dev", device] if device else [])
    proc = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        error = proc.stderr.decode("utf-8", "replace")
        if device and ("does not exist" in error or "Cannot find device" in error):
            raise OSError(errno.ENODEV, f"{device} is not present in the system")
        raise IPRoute2Error(proc.returncode, error.splitlines())
    return json.loads(proc.stdout or b"[]")


def getLink(dev: str) -> Link:  # noqa: N802 (VDSM's name)
    """The Link named `dev`; OSError ENODEV when there is none."""
    entries = _ip_links(dev)
    if not entries:
        raise OSError(errno.ENODEV, f"{dev} is not present in the system")
    return Link.fromDict(_link_info(entries[0]))


def getLinks() -> Iterator[Link]:  # noqa: N802 (VDSM's name)
    """Every link of the host; one that vanishes meanwhile is left out."""
    for entry in _ip_links():
        try:
            yield Link.fromDict(_link_info(entry))
        except OSError:
            continue


def visible_links() -> Iterator[Link]:
    return (link for link in getLinks() if not link.isHidden())


def nic_links() -> Iterator[Link]:
    return (link for link in getLinks() if link.isNIC())


class IPRoute2Error(Exception):
    pass


class IPRoute2NoDeviceError(IPRoute2Error):
    pass


class IPRoute2AlreadyExistsError(IPRoute2Error):
    pass


def _exec_cmd(command: Sequence[str]) -> list[str]:
    import subprocess

    proc = subprocess.run(list(command), capture_output=True, stdin=subprocess.DEVNULL, text=True)
    if proc.returncode:
        if "Cannot find device" in proc.stderr:
            kind: type[IPRoute2Error] = IPRoute2NoDeviceError
        elif "File exists" in proc.stderr:
            kind = IPRoute2AlreadyExistsError
        else:
            kind = IPRoute2Error
        raise kind(proc.returncode, proc.stderr.splitlines())
    return proc.stdout.splitlines()


def addrAdd(dev: str, ipaddr: str, netmask: object, family: int = 4) -> None:  # noqa: N802
    _exec_cmd([_IP_BINARY.cmd, f"-{family}", "addr", "add", "dev", dev, f"{ipaddr}/{netmask}"])


def addrDel(dev: str, ipaddr: str, netmask: object, family: int) -> None:  # noqa: N802
    _exec_cmd([_IP_BINARY.cmd, f"-{family}", "addr", "del", "dev", dev, f"{ipaddr}/{netmask}"])


def addrFlush(dev: str, family: object = "both") -> None:  # noqa: N802
    """Remove the link's global addresses (link-local ones stay)."""
    family_args = [f"-{family}"] if family in (4, 6) else []
    _exec_cmd([_IP_BINARY.cmd, *family_args, "addr", "flush", "dev", dev, "scope", "global"])


def linkAdd(name: str, linkType: str, link: str | None = None, args: Sequence[str] = ()) -> None:  # noqa: N802,N803
    lower = ["link", link] if link else []
    _exec_cmd([_IP_BINARY.cmd, "link", "add", *lower, "name", name, "type", linkType, *args])


def linkSet(dev: str, linkArgs: Sequence[str]) -> None:  # noqa: N802,N803
    _exec_cmd([_IP_BINARY.cmd, "link", "set", "dev", dev, *linkArgs])


def linkDel(dev: str) -> None:  # noqa: N802
    _exec_cmd([_IP_BINARY.cmd, "link", "del", "dev", dev])
