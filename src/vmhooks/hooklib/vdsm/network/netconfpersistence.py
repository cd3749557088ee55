"""`vdsm.network.netconfpersistence`: the networks, bonds and devices oVirt
set up on this host, as VDSM keeps them: one JSON file per entity under
/var/lib/vdsm/staging/netconf (running) and
/var/lib/vdsm/persistence/netconf (persisted), in `nets/`, `bonds/` and
`devices/`.

Reading works on any host: where oVirt never configured networks (a
vmhooks host) there are none. Changing what is stored on disk is oVirt's
host networking, which vmhooks does not run: `save`, `delete`, `store`
and `Transaction` raise NotAvailableError.
"""
from __future__ import annotations

import os

from vdsm._compat import NotAvailableError, unavailable_class

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NETCONF_BONDS = "bonds"
NETCONF_NETS = "nets"
NETCONF_DEVS = "devices"
CONF_RUN_DIR = "/var/lib/vdsm/staging/netconf"
CONF_PERSIST_DIR = "/var/lib/vdsm/persistence/netconf"
# Attributes of a network request that describe the call, not the network.
_VOLATILE_NET_ATTRS = ("blockingdhcp",)
_READ_ONLY = "vmhooks does not change oVirt's stored host network configuration"


class BaseConfig:
    def __init__(self, networks: dict[str, Any], bonds: dict[str, Any], devices: dict[str, Any]) -> None:
        self.networks = networks
        self.bonds = bonds
        self.devices = devices

    def setNetwork(self, network: str, attrs: dict[str, Any]) -> None:  # noqa: N802 (VDSM's name)
        self.networks[network] = {
            key: value for key, value in attrs.items() if value is not None and key not in _VOLATILE_NET_ATTRS
        }

    def removeNetwork(self, network: str) -> None:  # noqa: N802
        self.networks.pop(network, None)

    def setBonding(self, bonding: str, attributes: dict[str, Any]) -> None:  # noqa: N802
        self.bonds[bonding] = attributes

    def removeBonding(self, bonding: str) -> None:  # noqa: N802
        self.bonds.pop(bonding, None)

    def set_device(self, devname: str, devattrs: dict[str, Any]) -> None:
        self.devices[devname] = devattrs

    def remove_device(self, devname: str) -> None:
        self.devices.pop(devname, None)

    def diffFrom(self, other: BaseConfig) -> BaseConfig:  # noqa: N802
        """What changes `other` into this: changed entities, and removals."""
        return BaseConfig(_diff(self.networks, other.networks), _diff(self.bonds, other.bonds), {})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BaseConfig) and (self.networks, self.bonds) == (other.networks, other.bonds)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.networks}, {self.bonds}, {self.devices})"

    def __bool__(self) -> bool:
        return bool(self.networks or self.bonds)

    def as_unicode(self) -> dict[str, Any]:
        import json

        return {"networks": json.loads(json.dumps(self.networks)), "bonds": json.loads(json.dumps(self.bonds))}


def _diff(wanted: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {name: {"remove": True} for name in current if name not in wanted}
    result.update({name: attrs for name, attrs in wanted.items() if current.get(name) != attrs})
    return result


def _read_entities(path: str) -> dict[str, Any]:
    import json

    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return {}
    entities = {}
    for name in names:
        try:
            with open(os.path.join(path, name)) as handle:
                entities[name] = json.load(handle)
        except FileNotFoundError:  # removed meanwhile
            entities[name] = {}
    return entities


class Config(BaseConfig):
    def __init__(self, savePath: str) -> None:  # noqa: N803
        self.netconf_path = savePath
        self.networksPath = os.path.join(savePath, NETCONF_NETS)
        self.bondingsPath = os.path.join(savePath, NETCONF_BONDS)
        self.devicesPath = os.path.join(savePath, NETCONF_DEVS)
        super().__init__(
            _read_entities(self.networksPath), _read_entities(self.bondingsPath), _read_entities(self.devicesPath)
        )

    def save(self) -> None:
        raise NotAvailableError(f"{type(self).__name__}.save", _READ_ONLY)

    def delete(self) -> None:
        raise NotAvailableError(f"{type(self).__name__}.delete", _READ_ONLY)


class RunningConfig(Config):
    def __init__(self) -> None:
        super().__init__(CONF_RUN_DIR)

    @staticmethod
    def store() -> None:
        raise NotAvailableError("RunningConfig.store", _READ_ONLY)


class PersistentConfig(Config):
    def __init__(self) -> None:
        super().__init__(CONF_PERSIST_DIR)


Transaction = unavailable_class("vdsm.network.netconfpersistence.Transaction", _READ_ONLY)
