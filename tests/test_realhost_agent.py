"""The agent on real QEMU hosts: a real libvirtd per host (tests/realhost.py),
a `vmhooks serve` process per host (tests/agentproc.py), hooks installed,
and every assertion made on real state: libvirt's live XML and state on each
host (our own connections), what QEMU itself reports, the agents' VM.list and
Host.getHookHistory, and the order in which the hooks ran.

One host: the whole lifecycle through the API. Two hosts: live migration
between two agents over mutual TLS, in two network namespaces joined by a
veth pair where namespaces can be made, else on loopback.

Skipped only where real hosts cannot run (realhost.qemu_unavailable_reason)."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import textwrap
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest
from agentproc import VMHOOKS, AgentProcess, hook_runs, trace_hooks, traced
from conftest import PYTHON_SHEBANG
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from realhost import (  # noqa: F401  (fixtures are found by name in this module)
    LibvirtHost,
    daemon_ids,
    disk_xml,
    domain_xml,
    make_daemon_dir,
    make_disk_image,
    make_host,
    netns_pair,
    netns_unavailable_reason,
    realhost_available,
    realhost_dir,
    wait_for,
)
from tlsmaterial import Credentials, TLSMaterial, tls_material  # noqa: F401

from vmhooks.catalogue import install
from vmhooks.client import AgentUnreachable, Client, RpcError

try:  # VNC authentication is DES: cryptography >= 43 keeps it in `decrepit`
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

pytestmark = pytest.mark.realhost

MIGRATION_POINTS = [
    "before_vm_migrate_source", "before_device_migrate_source",
    "before_vm_migrate_destination", "before_device_migrate_destination",
    "after_device_migrate_source", "after_vm_migrate_source",
    "after_device_migrate_destination", "after_vm_migrate_destination",
]  # fmt: skip
NIC_MAC = "52:54:00:6d:68:01"
NIC = f"<interface type='user'><mac address='{NIC_MAC}'/><model type='virtio'/></interface>"
# As VDSM starts VMs: a VNC password that has already expired, so only a ticket opens it
# (QEMU accepts set_password only on a display started with a password).
VNC = "<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='none' passwdValidTo='1970-01-01T00:00:01'/>"


# ------------------------------------------------------------------ helpers


def write_hook(hooks_dir: Path, point: str, name: str, body: str, *, python: bool = False) -> Path:
    directory = hooks_dir / point
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / name
    shebang = PYTHON_SHEBANG if python else "#!/bin/sh"
    path.write_text(f"{shebang}\n{textwrap.dedent(body).lstrip()}")
    path.chmod(0o755)
    return path


def props_hook(hooks_dir: Path, points: list[str], log_file: Path, names: list[str]) -> None:
    """A `06_props` hook on each point appending `<point> name=value...` (the
    custom properties it was given) to log_file."""
    values = " ".join(f"{name}=${{{name}:-}}" for name in names)
    for point in points:
        write_hook(hooks_dir, point, "06_props", f'echo "{point} {values}" >> "{log_file}"\n')


def qmp(domain: libvirt.virDomain, command: str, **arguments: Any) -> Any:
    """Ask QEMU itself (its monitor), not libvirt's idea of it."""
    request = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuMonitorCommand(domain, json.dumps(request), 0))["return"]


def vnc_auth(port: int, password: str | None) -> list[int] | bool:
    """RFB 3.8 on 127.0.0.1:port. None: the security types offered; else
    whether VNC authentication with `password` succeeds."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(12)
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        types = list(_read_exactly(sock, count))
        if password is None:
            return types
        sock.sendall(b"\x02")
        challenge = _read_exactly(sock, 16)
        # VNC's DES key: the password's bytes, each bit-reversed (DES = 3DES with K1=K2=K3).
        key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode().ljust(8, b"\0")[:8])
        encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        sock.sendall(encryptor.update(challenge) + encryptor.finalize())
        return struct.unpack(">I", _read_exactly(sock, 4))[0] == 0


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        data += chunk
    return data


def tx_bytes(host: LibvirtHost) -> int:
    assert host.netns is not None
    out = subprocess.run(["ip", "-n", host.netns.name, "-j", "-s", "link", "show", host.netns.interface],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def net_namespace_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@dataclass
class RealAgent:
    """One host: its libvirtd, its agent (`vmhooks serve`) and the agent's hooks."""

    host: LibvirtHost
    process: AgentProcess
    hooks: Path
    save_dir: Path
    address: str  # HOST:PORT where peers reach the agent (mutual TLS)
    migration_port: int
    conn: libvirt.virConnect  # the test's own connection to the host

    def call(self, method: str, **params: Any) -> Any:
        return self.process.call(method, **params)

    def hook(self, point: str, name: str, body: str, *, python: bool = False) -> Path:
        return write_hook(self.hooks, point, name, body, python=python)

    def domain(self, vm_id: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def live(self, vm_id: str) -> ET.Element:
        domain = self.domain(vm_id)
        assert domain is not None, f"{vm_id} is not on host {self.host.name}"
        return ET.fromstring(domain.XMLDesc(0))

    def state(self, vm_id: str) -> tuple[int, int] | None:
        domain = self.domain(vm_id)
        return tuple(domain.state()) if domain is not None else None  # type: ignore[return-value]

    def status(self, vm_id: str) -> str | None:
        return next((vm["status"] for vm in self.call("VM.list") if vm["vmId"] == vm_id), None)

    def history(self, vm_id: str, point: str | None = None) -> list[dict[str, Any]]:
        return hook_runs(self.call("Host.getHookHistory", vmId=vm_id, **({"point": point} if point else {})))

    def points(self, vm_id: str) -> list[tuple[str, str]]:
        """(point, operation) of each chain recorded for this VM, in order."""
        seen: list[tuple[int, str, str]] = []
        for row in self.history(vm_id):
            if not seen or seen[-1][0] != row["chain"]:
                seen.append((row["chain"], row["point"], row["operation"]))
        return [(point, operation) for _, point, operation in seen]


MakeAgent = Callable[..., RealAgent]


@pytest.fixture
def make_agent(
    make_host: Callable[..., LibvirtHost], realhost_dir: Path, tls_material: TLSMaterial
) -> Iterator[MakeAgent]:
    """make_agent(host, credentials=None, *, listen_host=None, migration_address=True)
    -> a started RealAgent on that host: listening for peers on host.address
    (or `listen_host`) with its own certificate (server and client usage;
    `credentials` to give another), hibernation images in a directory of the
    daemon's user, incoming migrations on one free port of host.address (no
    --migration-address when `migration_address` is false). Agents stop
    before their hosts (their logs are printed)."""
    agents: list[RealAgent] = []

    def make(
        host: LibvirtHost, credentials: Credentials | None = None, *,
        listen_host: str | None = None, migration_address: bool = True,
    ) -> RealAgent:  # fmt: skip
        tls = tls_material
        hooks = realhost_dir / f"{host.name}-hooks"
        hooks.mkdir(mode=0o755)
        credentials = credentials or tls.authority.issue(
            tls.directory, host.name, f"agent-{host.name}", server=True, client=True)
        listen_port = host.free_port()
        migration_port = host.free_port()
        while migration_port == listen_port:
            migration_port = host.free_port()
        address = f"{host.address}:{listen_port}"
        process = AgentProcess(
            realhost_dir / f"{host.name}-agent", hooks, host.uri,
            "--listen", f"{listen_host or host.address}:{listen_port}",
            "--tls-cert", str(credentials.cert), "--tls-key", str(credentials.key), "--tls-ca", str(tls.ca),
            "--save-dir", str(make_daemon_dir(realhost_dir / f"{host.name}-save")),
            *(["--migration-address", host.address] if migration_address else []),
            "--migration-ports", f"{migration_port}-{migration_port}",
            "--migration-libvirt-uri", host.uri, "--hook-timeout", "30",
            # SIGTERM if the test process dies without stopping it; in the host's namespace if any.
            prefix=["setpriv", "--pdeathsig", "TERM", "--", *(host.netns.command_prefix() if host.netns else [])],
        )  # fmt: skip
        agent = RealAgent(host, process, hooks, realhost_dir / f"{host.name}-save", address, migration_port,
                          host.connect())  # fmt: skip
        agents.append(agent)
        process.start(timeout=30)
        return agent

    try:
        yield make
    finally:
        for agent in reversed(agents):
            if agent.process.proc is not None:
                with contextlib.suppress(AssertionError):
                    agent.process.stop()
            print(f"=== agent on {agent.host.name}\n" + "\n".join(agent.process.log().splitlines()[-40:]))


def _hosts(request: pytest.FixtureRequest, network: str) -> tuple[LibvirtHost, LibvirtHost]:
    if network == "netns":
        reason = netns_unavailable_reason()
        if reason is not None:
            pytest.skip(f"network namespaces unavailable: {reason}")
        first, second = request.getfixturevalue("netns_pair")  # made first, removed last
        make = request.getfixturevalue("make_host")
        return make("na", first), make("nb", second)
    make = request.getfixturevalue("make_host")
    return make("la"), make("lb")


@pytest.fixture
def host_pair_any(request: pytest.FixtureRequest) -> tuple[LibvirtHost, LibvirtHost]:
    """Two hosts: in two network namespaces where they can be made, else on loopback."""
    return _hosts(request, "netns" if netns_unavailable_reason() is None else "loopback")


@pytest.fixture
def agent_pair(host_pair_any: tuple[LibvirtHost, LibvirtHost], make_agent: MakeAgent) -> tuple[RealAgent, RealAgent]:
    source, destination = host_pair_any
    return make_agent(source), make_agent(destination)


@pytest.fixture(params=["loopback", "netns"])
def agent_pair_each_network(request: pytest.FixtureRequest) -> tuple[RealAgent, RealAgent]:
    """Two agents on two hosts, once on loopback and once across two namespaces."""
    source, destination = _hosts(request, request.param)
    make_agent = request.getfixturevalue("make_agent")
    return make_agent(source), make_agent(destination)


@pytest.fixture
def one_agent(make_host: Callable[..., LibvirtHost], make_agent: MakeAgent) -> RealAgent:
    return make_agent(make_host("h1"))


def create(agent: RealAgent, xml: str, **params: Any) -> tuple[str, str]:
    root = ET.fromstring(xml)
    vm_id, name = root.findtext("uuid") or "", root.findtext("name") or ""
    result = agent.call("VM.create", xml=xml, **params)
    assert result["vmId"] == vm_id
    return vm_id, name


def interfaces(agent: RealAgent, vm_id: str) -> dict[str, ET.Element]:
    """The VM's live <interface> elements by MAC address."""
    return {nic.find("mac").get("address"): nic for nic in agent.live(vm_id).iterfind("devices/interface")}


def assert_runs_only_on(host: RealAgent, other: RealAgent, vm_id: str, name: str) -> None:
    """libvirt and QEMU on both hosts, and both agents, agree where the VM is."""
    assert host.state(vm_id) is not None and host.state(vm_id)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert host.host.qemu_pid(name) is not None
    assert other.domain(vm_id) is None and other.host.qemu_pid(name) is None
    assert host.status(vm_id) == "up"
    assert other.call("VM.list") == []


# ------------------------------------------------------------------ one host


def test_lifecycle_with_hooks_on_real_qemu(one_agent: RealAgent, tmp_path: Path) -> None:
    agent = one_agent
    log = tmp_path / "trace.log"
    trace_hooks(agent.hooks, [
        "before_vm_start", "after_vm_start", "before_vm_pause", "after_vm_pause", "before_vm_cont",
        "after_vm_cont", "before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate",
        "after_vm_dehibernate", "before_vm_destroy", "after_vm_destroy",
    ], log)  # fmt: skip
    agent.hook("before_vm_start", "50_edit", """
        import os
        import hooking
        domxml = hooking.read_domxml()
        title = domxml.createElement('title')
        title.appendChild(domxml.createTextNode('started by ' + os.environ['owner']))
        domxml.documentElement.appendChild(title)
        domxml.getElementsByTagName('vcpu')[0].firstChild.data = '2'
        hooking.write_domxml(domxml)
        if hooking.tobool(os.environ.get('startpaused')):
            flags = hooking.load_vm_launch_flags_from_file(os.environ['vmId'])
            hooking.dump_vm_launch_flags_to_file(os.environ['vmId'], flags | 1)  # VIR_DOMAIN_START_PAUSED
    """, python=True)
    agent.hook("before_vm_dehibernate", "50_edit", """
        import os
        import hooking
        domxml = hooking.read_domxml()
        description = domxml.createElement('description')
        description.appendChild(domxml.createTextNode('restored, FROM_SNAPSHOT=' + os.environ['FROM_SNAPSHOT']))
        domxml.documentElement.appendChild(description)
        hooking.write_domxml(domxml)
    """, python=True)

    # Start: the hook's XML is what runs, and its launch flags are honoured.
    vm_id, name = create(agent, domain_xml(), custom={"owner": "alice", "startpaused": "true"})
    assert agent.state(vm_id) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
    assert agent.status(vm_id) == "paused"
    live = agent.live(vm_id)
    assert live.findtext("title") == "started by alice"
    assert live.findtext("vcpu") == "2"
    domain = agent.domain(vm_id)
    assert len(qmp(domain, "query-cpus-fast")) == 2  # QEMU runs two vCPUs
    assert agent.call("VM.getStats", vmId=vm_id)["statsList"][0]["vcpuCount"] == "2"

    assert agent.call("VM.cont", vmId=vm_id)["status"] == "up"
    assert agent.state(vm_id)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert qmp(domain, "query-status")["status"] == "running"
    assert agent.call("VM.pause", vmId=vm_id)["status"] == "paused"
    assert agent.state(vm_id) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
    assert qmp(domain, "query-status")["status"] == "paused"
    assert agent.call("VM.cont", vmId=vm_id)["status"] == "up"
    assert agent.state(vm_id)[0] == libvirt.VIR_DOMAIN_RUNNING

    # Hibernate: a real save image written by the daemon, QEMU gone.
    assert agent.call("VM.hibernate", vmId=vm_id)["status"] == "hibernated"
    image = agent.save_dir / f"{vm_id}.img"
    assert image.read_bytes()[:16] == b"LibvirtQemudSave"  # complete, in libvirt's format
    assert image.stat().st_size > 100_000 and image.stat().st_uid == daemon_ids()[0]
    assert agent.domain(vm_id) is None and agent.host.qemu_pid(name) is None
    assert agent.status(vm_id) == "hibernated"

    # Dehibernate: before_vm_dehibernate's edit is in the restored VM.
    assert agent.call("VM.dehibernate", vmId=vm_id)["status"] == "up"
    assert agent.state(vm_id) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED)
    live = agent.live(vm_id)
    assert live.findtext("description") == "restored, FROM_SNAPSHOT=False"
    assert live.findtext("title") == "started by alice" and live.findtext("vcpu") == "2"
    assert not image.exists()
    assert agent.host.qemu_pid(name) is not None

    assert agent.call("VM.destroy", vmId=vm_id)["status"] == "down"
    assert agent.domain(vm_id) is None and agent.host.qemu_pid(name) is None
    assert agent.call("VM.list") == []

    assert traced(log, vm_id) == [
        "before_vm_start", "after_vm_start", "before_vm_cont", "after_vm_cont",
        "before_vm_pause", "after_vm_pause", "before_vm_cont", "after_vm_cont",
        "before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate", "after_vm_dehibernate",
        "before_vm_destroy", "after_vm_destroy",
    ]  # fmt: skip
    edits = [row for row in agent.history(vm_id) if row["script"] == "50_edit"]
    assert [(row["point"], row["changed"], row["status"]) for row in edits] == [
        ("before_vm_start", True, "ok"), ("before_vm_dehibernate", True, "ok")]


def test_nic_and_disk_hotplug_with_device_properties_and_hooks(one_agent: RealAgent, tmp_path: Path) -> None:
    agent = one_agent
    log, props = tmp_path / "trace.log", tmp_path / "props.log"
    device_points = [
        "before_nic_hotplug", "after_nic_hotplug", "before_nic_hotunplug", "after_nic_hotunplug",
        "after_nic_hotunplug_fail", "before_disk_hotplug", "after_disk_hotplug", "before_disk_hotunplug",
        "after_disk_hotunplug",
    ]  # fmt: skip
    trace_hooks(agent.hooks, device_points, log)
    props_hook(agent.hooks, device_points, props, ["linkstate", "diskserial"])
    agent.hook("before_nic_hotplug", "50_link", """
        import os
        import hooking
        nic = hooking.read_domxml()
        link = nic.createElement('link')
        link.setAttribute('state', os.environ['linkstate'])
        nic.documentElement.appendChild(link)
        alias = nic.createElement('alias')
        alias.setAttribute('name', 'ua-hooked')
        nic.documentElement.appendChild(alias)
        hooking.write_domxml(nic)
    """, python=True)
    agent.hook("before_disk_hotplug", "50_serial", """
        import os
        import hooking
        disk = hooking.read_domxml()
        serial = disk.createElement('serial')
        serial.appendChild(disk.createTextNode(os.environ['diskserial']))
        disk.documentElement.appendChild(serial)
        hooking.write_domxml(disk)
    """, python=True)
    vm_id, name = create(agent, domain_xml(scsi=True, usb=True))
    domain = agent.domain(vm_id)

    # A USB NIC (a PCI one would never finish unplugging without a guest OS).
    mac = "52:54:00:6d:68:10"
    nic = f"<interface type='user'><mac address='{mac}'/><model type='usb-net'/></interface>"
    agent.call("VM.hotplugNic", vmId=vm_id, xml=nic, custom={"linkstate": "down"})
    attached = interfaces(agent, vm_id)[mac]
    assert attached.find("link").get("state") == "down"  # the hook's output is what was attached
    assert attached.find("alias").get("name") == "ua-hooked"
    assert "ua-hooked" in {entry["name"] for entry in qmp(domain, "qom-list", path="/machine/peripheral")}

    agent.call("VM.hotunplugNic", vmId=vm_id, xml=nic)  # the properties are remembered
    assert mac not in interfaces(agent, vm_id)
    assert "ua-hooked" not in {entry["name"] for entry in qmp(domain, "qom-list", path="/machine/peripheral")}

    # A SCSI disk: the hook's serial is what QEMU got.
    image = make_disk_image(agent.host.root.parent / "hotplug.qcow2")
    agent.call("VM.hotplugDisk", vmId=vm_id, xml=disk_xml(image, "sda"), custom={"diskserial": "HOOKED42"})
    disk = agent.live(vm_id).find("devices/disk")
    assert disk.find("target").get("dev") == "sda" and disk.findtext("serial") == "HOOKED42"
    device = f"/machine/peripheral/{disk.find('alias').get('name')}"
    assert qmp(domain, "qom-get", path=device, property="serial") == "HOOKED42"
    assert str(image) in {block["inserted"]["file"] for block in qmp(domain, "query-block") if "inserted" in block}

    agent.call("VM.hotunplugDisk", vmId=vm_id, xml=disk_xml(image, "sda"))
    assert agent.live(vm_id).find("devices/disk") is None
    assert not [block for block in qmp(domain, "query-block") if "inserted" in block]
    assert agent.status(vm_id) == "up"

    assert traced(log, vm_id) == [
        "before_nic_hotplug", "after_nic_hotplug", "before_nic_hotunplug", "after_nic_hotunplug",
        "before_disk_hotplug", "after_disk_hotplug", "before_disk_hotunplug", "after_disk_hotunplug",
    ]  # fmt: skip
    assert props.read_text().splitlines() == [
        "before_nic_hotplug linkstate=down diskserial=", "after_nic_hotplug linkstate=down diskserial=",
        "before_nic_hotunplug linkstate=down diskserial=", "after_nic_hotunplug linkstate=down diskserial=",
        "before_disk_hotplug linkstate= diskserial=HOOKED42", "after_disk_hotplug linkstate= diskserial=HOOKED42",
        "before_disk_hotunplug linkstate= diskserial=HOOKED42", "after_disk_hotunplug linkstate= diskserial=HOOKED42",
    ]  # fmt: skip
    agent.call("VM.destroy", vmId=vm_id)


def test_an_unplug_the_guest_never_completes_is_an_error(one_agent: RealAgent, tmp_path: Path) -> None:
    """A PCI NIC with no guest OS to release it: libvirt gives up waiting and
    returns, the NIC still attached. The agent must not report an unplug."""
    agent = one_agent
    log, props = tmp_path / "trace.log", tmp_path / "props.log"
    points = ["before_nic_hotunplug", "after_nic_hotunplug", "after_nic_hotunplug_fail",
              "before_device_destroy", "after_device_destroy"]  # fmt: skip
    trace_hooks(agent.hooks, points, log)
    props_hook(agent.hooks, points, props, ["nicprop"])
    vm_id, _ = create(agent, domain_xml(devices=NIC), deviceCustom={NIC_MAC: {"nicprop": "kept"}})

    with pytest.raises(RpcError) as error:
        agent.call("VM.hotunplugNic", vmId=vm_id, xml=NIC)
    assert error.value.code == 4
    assert "has not released" in str(error.value) and NIC_MAC in str(error.value)
    assert list(interfaces(agent, vm_id)) == [NIC_MAC]  # still there, in libvirt's live XML
    assert traced(log, vm_id) == ["before_nic_hotunplug", "after_nic_hotunplug_fail"]

    # The agent still knows the NIC's properties: its destroy hooks get them.
    agent.call("VM.destroy", vmId=vm_id)
    assert traced(log, vm_id)[2:] == ["before_device_destroy", "after_device_destroy"]
    assert props.read_text().splitlines() == [f"{point} nicprop=kept" for point in traced(log, vm_id)]


def test_set_ticket_on_a_vnc_display(one_agent: RealAgent, tmp_path: Path) -> None:
    agent = one_agent
    log, props = tmp_path / "trace.log", tmp_path / "props.log"
    trace_hooks(agent.hooks, ["before_vm_set_ticket", "after_vm_set_ticket"], log)
    props_hook(agent.hooks, ["before_vm_set_ticket", "after_vm_set_ticket"], props, ["userName"])
    vm_id, _ = create(agent, domain_xml(devices=VNC))
    graphics = agent.live(vm_id).find("devices/graphics")
    port = int(graphics.get("port"))
    assert vnc_auth(port, None) == [2]  # VNC authentication only
    assert vnc_auth(port, "none") is False  # the start password has expired

    agent.call("VM.setTicket", vmId=vm_id, password="s3cret", ttl=120, params={"userName": "admin"})
    assert vnc_auth(port, "s3cret") is True
    assert vnc_auth(port, "guess") is False
    valid_to = agent.live(vm_id).find("devices/graphics").get("passwdValidTo")
    assert valid_to is not None and valid_to > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())

    assert traced(log, vm_id) == ["before_vm_set_ticket", "after_vm_set_ticket"]
    assert props.read_text().splitlines() == [
        "before_vm_set_ticket userName=admin", "after_vm_set_ticket userName=admin"]  # fmt: skip
    agent.call("VM.destroy", vmId=vm_id)


def test_a_display_sent_without_password_starts_locked_and_takes_a_ticket(one_agent: RealAgent) -> None:
    agent = one_agent
    vm_id, _ = create(agent, domain_xml(devices="<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"))
    port = int(agent.live(vm_id).find("devices/graphics").get("port"))
    assert vnc_auth(port, None) == [2]  # a password is asked for: none was in the XML
    agent.call("VM.setTicket", vmId=vm_id, password="tick3t", ttl=60)
    assert vnc_auth(port, "tick3t") is True
    agent.call("VM.destroy", vmId=vm_id)


def test_qemu_killed_from_outside_still_runs_after_vm_destroy(one_agent: RealAgent, tmp_path: Path) -> None:
    agent = one_agent
    log = tmp_path / "trace.log"
    trace_hooks(agent.hooks, ["before_vm_destroy", "after_vm_destroy"], log)
    vm_id, name = create(agent, domain_xml())
    pid = agent.host.qemu_pid(name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    # The history row is written when the chain ends: wait for it, not the hook.
    wait_for(lambda: agent.points(vm_id)[-1:] == [("after_vm_destroy", "event")], 20, what="after_vm_destroy")
    assert traced(log, vm_id) == ["after_vm_destroy"]
    (event,) = [o for o in agent.call("Host.getHookHistory", vmId=vm_id)["operations"] if o["operation"] == "event"]
    assert (event["caller"], event["reason"], event["result"]) == ("libvirt", "stopped: failed: QEMU exited or was killed", "ok")
    assert agent.call("VM.list") == []
    assert agent.domain(vm_id) is None  # transient: gone from libvirt
    with pytest.raises(RpcError) as error:
        agent.call("VM.destroy", vmId=vm_id)
    assert error.value.code == 2


# ------------------------------------------------------------------ two hosts


def migration_vm(agent: RealAgent, **custom: str) -> tuple[str, str]:
    """A running VM with a NIC that has device custom properties."""
    return create(agent, domain_xml(devices=NIC), custom={"site": "lab", **custom},
                  deviceCustom={NIC_MAC: {"nicprop": "moved"}})  # fmt: skip


def test_live_migration_with_source_and_destination_hooks(
    agent_pair_each_network: tuple[RealAgent, RealAgent], tmp_path: Path
) -> None:
    source, destination = agent_pair_each_network
    log, props = tmp_path / "trace.log", tmp_path / "props.log"
    for agent in (source, destination):
        trace_hooks(agent.hooks, [*MIGRATION_POINTS, "after_vm_destroy"], log)
        props_hook(agent.hooks, MIGRATION_POINTS, props, ["site", "nicprop"])
    destination.hook("before_vm_migrate_destination", "50_edit", """
        import hooking
        domxml = hooking.read_domxml()
        description = domxml.createElement('description')
        description.appendChild(domxml.createTextNode('edited on the destination'))
        domxml.documentElement.appendChild(description)
        hooking.write_domxml(domxml)
    """, python=True)
    # Two hosts to libvirt, each agent on its own.
    assert [agent.call("Host.getCapabilities")["uuid"] for agent in (source, destination)] == [
        source.host.host_uuid, destination.host.host_uuid]  # fmt: skip
    assert source.host.host_uuid != destination.host.host_uuid
    vm_id, name = migration_vm(source)
    sent_before = tx_bytes(source.host) if source.host.netns else 0

    result = source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert result == {"vmId": vm_id, "name": name, "status": "migrated", "destination": destination.address,
                      "destinationStatus": "up"}  # fmt: skip

    assert_runs_only_on(destination, source, vm_id, name)
    assert destination.state(vm_id) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)
    assert destination.live(vm_id).findtext("description") == "edited on the destination"
    assert destination.call("VM.list") == [{"vmId": vm_id, "name": name, "status": "up", "custom": {"site": "lab"}}]
    assert traced(log, vm_id) == MIGRATION_POINTS
    # The VM's properties reach the VM points, the NIC's the device points, on both hosts.
    assert props.read_text().splitlines() == [
        f"{point} site=lab nicprop=" if "_vm_" in point else f"{point} site= nicprop=moved"
        for point in MIGRATION_POINTS
    ]
    assert source.points(vm_id) == [
        ("before_vm_migrate_source", "migrate"), ("before_device_migrate_source", "migrate"),
        ("after_device_migrate_source", "migrate"), ("after_vm_migrate_source", "migrate")]  # fmt: skip
    assert destination.points(vm_id) == [
        ("before_vm_migrate_destination", "migrationCreate"),
        ("before_device_migrate_destination", "migrationCreate"),
        ("after_device_migrate_destination", "migrationFinish"),
        ("after_vm_migrate_destination", "migrationFinish"),
    ]
    if source.host.netns is not None:
        assert destination.host.netns is not None
        namespace = f"net:[{os.stat(destination.host.netns.path).st_ino}]"
        assert net_namespace_of(destination.host.qemu_pid(name)) == namespace
        assert tx_bytes(source.host) - sent_before > 100_000  # the guest's memory crossed the veth pair

    # The destination adopted it: its operations work on it.
    assert destination.call("VM.pause", vmId=vm_id)["status"] == "paused"
    assert destination.state(vm_id)[0] == libvirt.VIR_DOMAIN_PAUSED
    assert destination.call("VM.cont", vmId=vm_id)["status"] == "up"

    # And back, with the CLI.
    back = subprocess.run([*VMHOOKS, "vm", "migrate", name, "--to", source.address,
                           "--socket", str(destination.process.socket)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"{name} ({vm_id}): migrated to {source.address} (up there)"
    assert_runs_only_on(source, destination, vm_id, name)
    assert source.live(vm_id).findtext("description") == "edited on the destination"
    assert traced(log, vm_id) == MIGRATION_POINTS * 2

    # No host ever thought the VM stopped (libvirt's STOPPED/MIGRATED events
    # on each source): after_vm_destroy runs once, at the real destroy.
    source.call("VM.destroy", vmId=vm_id)
    assert traced(log, vm_id) == [*MIGRATION_POINTS * 2, "after_vm_destroy"]
    assert [point for point, _ in destination.points(vm_id)].count("after_vm_destroy") == 0
    assert source.call("VM.list") == destination.call("VM.list") == []


def test_destination_listens_for_the_migration_on_its_migration_address_only(
    make_host: Callable[..., LibvirtHost], make_agent: MakeAgent
) -> None:
    """Another service holds the migration port on another local address
    (127.0.0.2): QEMU listening on every address would collide with it."""
    source, destination = make_agent(make_host("la")), make_agent(make_host("lb"))
    vm_id, name = migration_vm(source)
    with socket.create_server(("127.0.0.2", destination.migration_port)):
        source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert_runs_only_on(destination, source, vm_id, name)


def test_a_destination_listening_on_every_address_gets_the_data_where_it_was_reached(
    request: pytest.FixtureRequest,
) -> None:
    """`--listen 0.0.0.0:PORT` and no --migration-address (the README's
    example): the migration data must go to the address the source reached
    the destination's agent at, not to 0.0.0.0 (which is the source itself)."""
    first, second = _hosts(request, "netns")  # on loopback 0.0.0.0 would reach the destination by luck
    make_agent = request.getfixturevalue("make_agent")
    source = make_agent(first)
    destination = make_agent(second, listen_host="0.0.0.0", migration_address=False)
    vm_id, name = migration_vm(source)
    source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert_runs_only_on(destination, source, vm_id, name)


def test_cantmigrate_and_source_device_hooks_refuse(agent_pair: tuple[RealAgent, RealAgent], tmp_path: Path) -> None:
    source, destination = agent_pair
    log = tmp_path / "trace.log"
    for agent in (source, destination):
        trace_hooks(agent.hooks, MIGRATION_POINTS, log)
    install(["cantmigrate"], source.hooks)  # the real catalogue hook
    vm_id, name = migration_vm(source, cantmigrate="")

    with pytest.raises(RpcError) as error:
        source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert error.value.code == 1
    assert "cantmigrate: before_vm_migrate_source: cannot migrate this VM" in str(error.value)
    cli = subprocess.run([*VMHOOKS, "vm", "migrate", name, "--to", destination.address,
                          "--socket", str(source.process.socket)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (cli.returncode, cli.stdout) == (1, "")
    assert cli.stderr == f"vmhooks: {error.value}\n"  # one line, the hook's own message
    assert traced(log, vm_id) == ["before_vm_migrate_source"] * 2
    assert_runs_only_on(source, destination, vm_id, name)

    # A device hook refuses too, with its own message.
    source.hook("before_device_migrate_source", "50_pinned",
                'if [ "$nicprop" = pinned ]; then echo "NIC is pinned to this host" >&2; exit 1; fi')
    other_id, other_name = create(source, domain_xml(devices=NIC.replace("01'", "02'")),
                                  deviceCustom={NIC_MAC.replace("01", "02"): {"nicprop": "pinned"}})  # fmt: skip
    with pytest.raises(RpcError) as error:
        source.call("VM.migrate", vmId=other_id, dst=destination.address)
    assert "before_device_migrate_source: 50_pinned failed (exit 1): NIC is pinned to this host" in str(error.value)
    assert traced(log, other_id) == ["before_vm_migrate_source", "before_device_migrate_source"]
    assert source.state(other_id)[0] == libvirt.VIR_DOMAIN_RUNNING and source.status(other_id) == "up"
    assert destination.call("VM.list") == [] and destination.conn.listAllDomains() == []


def test_destination_refusals_abort_cleanly(agent_pair: tuple[RealAgent, RealAgent], tmp_path: Path) -> None:
    source, destination = agent_pair
    log = tmp_path / "trace.log"
    for agent in (source, destination):
        trace_hooks(agent.hooks, MIGRATION_POINTS, log)
    refuse = destination.hook("before_device_migrate_destination", "50_refuse",
                              'echo "no room for $nicprop NICs here" >&2; exit 1')  # fmt: skip
    vm_id, name = migration_vm(source)

    with pytest.raises(RpcError) as error:
        source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert error.value.code == 1
    message = "before_device_migrate_destination: 50_refuse failed (exit 1): no room for moved NICs here"
    assert message in str(error.value)
    assert traced(log, vm_id) == MIGRATION_POINTS[:4]
    assert_runs_only_on(source, destination, vm_id, name)
    assert destination.points(vm_id) == [("before_vm_migrate_destination", "migrationCreate"),
                                         ("before_device_migrate_destination", "migrationCreate")]  # fmt: skip

    # The destination's edit is the XML libvirt gets: one it refuses leaves the VM where it was.
    refuse.unlink()
    destination.hook("before_vm_migrate_destination", "50_memory", """
        import hooking
        domxml = hooking.read_domxml()
        domxml.getElementsByTagName('memory')[0].firstChild.data = '131072'
        hooking.write_domxml(domxml)
    """, python=True)
    with pytest.raises(RpcError) as error:
        source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert error.value.code == 4
    assert f"migrating VM {name} to {destination.address}: libvirt:" in str(error.value)
    assert "Target domain max memory 131072 does not match source 65536" in str(error.value)
    assert_runs_only_on(source, destination, vm_id, name)
    assert [point for point, _ in source.points(vm_id)].count("after_vm_migrate_source") == 0


def test_a_migration_that_fails_half_way_leaves_the_vm_on_the_source(
    agent_pair: tuple[RealAgent, RealAgent], tmp_path: Path
) -> None:
    source, destination = agent_pair
    log = tmp_path / "trace.log"
    for agent in (source, destination):
        trace_hooks(agent.hooks, [*MIGRATION_POINTS, "after_vm_destroy"], log)
    vm_id, name = migration_vm(source)
    domain = source.domain(vm_id)
    domain.migrateSetMaxSpeed(1, 0)  # 1 MiB/s: the transfer takes a second or so

    outcome: list[BaseException | dict[str, Any]] = []

    def migrate() -> None:
        try:
            outcome.append(source.call("VM.migrate", vmId=vm_id, dst=destination.address))
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    def memory_sent() -> int:
        with contextlib.suppress(libvirt.libvirtError):
            return int(domain.jobStats().get("memory_processed", 0))
        return 0

    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        wait_for(lambda: outcome or memory_sent() > 0, 30, 0.01, what="the guest's memory to flow")
        assert not outcome, f"the migration ended before it was cut: {outcome}"
        incoming = destination.host.qemu_pid(name)
        assert incoming is not None
        os.kill(incoming, signal.SIGSTOP)  # frozen half-way: it cannot complete now
        assert source.status(vm_id) == "migrating" and destination.status(vm_id) == "incoming"
        os.kill(incoming, signal.SIGKILL)
    finally:
        thread.join(120)
    assert len(outcome) == 1 and isinstance(outcome[0], RpcError), outcome
    assert outcome[0].code == 4
    assert f"migrating VM {name} to {destination.address}: libvirt: " in str(outcome[0])

    assert_runs_only_on(source, destination, vm_id, name)
    assert traced(log, vm_id) == MIGRATION_POINTS[:4]
    # Still the source's VM in every way: it pauses, and its destroy runs the hooks once.
    assert source.call("VM.pause", vmId=vm_id)["status"] == "paused"
    source.call("VM.destroy", vmId=vm_id)
    assert traced(log, vm_id) == [*MIGRATION_POINTS[:4], "after_vm_destroy"]
    assert destination.history(vm_id, "after_vm_destroy") == []


def test_agents_talk_to_each_other_with_mutual_tls_only(
    host_pair_any: tuple[LibvirtHost, LibvirtHost], make_agent: MakeAgent, tls_material: TLSMaterial
) -> None:
    tls = tls_material
    first, second = host_pair_any
    # The source's certificate comes from another CA (it trusts the right one).
    stranger = tls.other_authority.issue(tls.directory, "stranger", "agent-stranger", server=True, client=True)
    source, destination = make_agent(first, stranger), make_agent(second)
    vm_id, name = migration_vm(source)
    with pytest.raises(RpcError) as error:
        source.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert f"the agent at {destination.address} (TLS)" in str(error.value)
    assert_runs_only_on(source, destination, vm_id, name)

    # Clients from the source's side of the network.
    def inside() -> contextlib.AbstractContextManager[None]:
        return first.netns.entered() if first.netns is not None else contextlib.nullcontext()

    peer = tls.authority.issue(tls.directory, "peer", "peer", client=True)

    def call(context: ssl.SSLContext, method: str = "VM.migrationFinish") -> int:
        """The JSON-RPC error code the agent answers (it knows no such VM)."""
        with inside(), pytest.raises(RpcError) as answer:
            Client(address=destination.address, tls=context, timeout=10).call(
                method, **({"vmId": str(uuid.uuid4()), "success": False} if method != "VM.list" else {}))
        return answer.value.code

    assert call(tls.client_context(peer)) == 2  # answered: no such VM
    assert call(tls.client_context(peer), "VM.list") == -32601  # peers get the migration calls only
    with pytest.raises(AgentUnreachable):  # no certificate
        call(ssl.create_default_context(cafile=str(tls.ca)))
    with pytest.raises(AgentUnreachable):  # a certificate from another CA
        call(tls.client_context(tls.other_client))
    with pytest.raises(AgentUnreachable, match="TLS"):  # the server checked against another CA
        call(tls.client_context(peer, ca=tls.other_ca))
    host, port = destination.address.rsplit(":", 1)
    with inside():
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, socket.timeout)):
            plain.request("POST", "/rpc", b'{"jsonrpc": "2.0", "method": "VM.list", "id": 1}')
            plain.getresponse().read()
    assert call(tls.client_context(peer)) == 2


@pytest.mark.realhost
def test_a_restarted_agent_reattaches_to_running_vms(one_agent: RealAgent, tmp_path: Path) -> None:
    agent = one_agent
    log = tmp_path / "trace.log"
    trace_hooks(agent.hooks, ["before_vm_start", "after_vm_destroy"], log)
    running, _ = create(agent, domain_xml())
    paused, _ = create(agent, domain_xml())
    agent.call("VM.pause", vmId=paused)
    vanished, vanished_name = create(agent, domain_xml())
    assert agent.process.stop() == 0
    # While the agent is away: one VM's QEMU dies.
    pid = agent.host.qemu_pid(vanished_name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: agent.domain(vanished) is None, 20, what="libvirt to notice the dead QEMU")

    agent.process.start(timeout=30)
    statuses = {vm["vmId"]: vm["status"] for vm in agent.call("VM.list")}
    assert statuses == {running: "up", paused: "paused"}
    assert traced(log, vanished) == ["before_vm_start", "after_vm_destroy"]
    assert agent.points(vanished)[-1] == ("after_vm_destroy", "recover")
    assert agent.points(running) == [("before_vm_start", "create")]  # history kept across the restart
    # The re-attached VMs are fully managed again.
    assert agent.call("VM.cont", vmId=paused)["status"] == "up"
    for vm_id in (running, paused):
        agent.call("VM.destroy", vmId=vm_id)
    assert traced(log, running)[-1] == "after_vm_destroy"


def test_the_cli_drives_real_qemu_devices_by_name_and_prefix(one_agent: RealAgent, tmp_path: Path) -> None:
    """`vmhooks vm ...` as an admin types it, against real QEMU: a NIC's
    property by MAC on create, a SCSI disk plugged and unplugged, the XML."""
    agent = one_agent
    props = tmp_path / "props.log"
    props_hook(agent.hooks, ["before_device_create", "before_disk_hotplug"], props, ["nicprop", "diskprop"])

    def vmhooks(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VMHOOKS, *args, "--socket", str(agent.process.socket)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    (tmp_path / "vm.xml").write_text(domain_xml(devices=NIC, scsi=True))
    root = ET.fromstring((tmp_path / "vm.xml").read_text())
    vm_id, name = root.findtext("uuid") or "", root.findtext("name") or ""
    created = vmhooks("vm", "create", str(tmp_path / "vm.xml"), "--device-prop", f"{NIC_MAC}:nicprop=a:b")
    assert created.stdout.strip() == f"{name} ({vm_id}): up", created.stderr
    image = make_disk_image(agent.host.root.parent / "cli-hotplug.qcow2")
    (tmp_path / "disk.xml").write_text(disk_xml(image, "sda"))
    plugged = vmhooks("vm", "hotplug-disk", vm_id[:8], str(tmp_path / "disk.xml"), "--prop", "diskprop=x")
    assert plugged.stdout.strip() == f"{name} ({vm_id}): hotplug-disk done, up", plugged.stderr
    live = ET.fromstring(vmhooks("vm", "xml", name).stdout)
    assert live.find("devices/disk/target").get("dev") == "sda"
    assert live.find("devices/disk/source").get("file") == str(image)
    unplugged = vmhooks("vm", "hotunplug-disk", name, str(tmp_path / "disk.xml"), "--json")
    assert json.loads(unplugged.stdout)["status"] == "up", unplugged.stderr
    assert agent.live(vm_id).find("devices/disk") is None
    assert props.read_text().splitlines() == [
        "before_device_create nicprop=a:b diskprop=", "before_disk_hotplug nicprop= diskprop=x"]
    assert vmhooks("vm", "destroy", name).returncode == 0
