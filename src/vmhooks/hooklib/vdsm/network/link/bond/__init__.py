"""`vdsm.network.link.bond`: a kernel bond as sysfs shows it.

`Bond(name)` reads an existing bond's slaves and active slave from
/sys/class/net/NAME/bonding (the given `slaves` when it does not exist).
Changing bonds is oVirt's host networking, which vmhooks does not run:
create, destroy and the slave and option changes raise NotAvailableError.
"""
from __future__ import annotations

import os

from vdsm._compat import NotAvailableError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

SYSFS_NET = "/sys/class/net"
BONDING_MASTERS = SYSFS_NET + "/bonding_masters"


class Bond:
    def __init__(self, name: str, slaves: Iterable[str] = (), options: str | None = None) -> None:
        self._master = name
        self._slaves = set(slaves)
        self._options = options
        if self.exists():
            self._slaves = set(self._read("slaves").split())

    def __enter__(self) -> Bond:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def _read(self, name: str) -> str:
        with open(os.path.join(SYSFS_NET, self._master, "bonding", name)) as handle:
            return handle.readline().strip()

    @property
    def master(self) -> str:
        return self._master

    @property
    def slaves(self) -> set[str]:
        return self._slaves

    @property
    def options(self) -> str | None:
        return self._options

    def exists(self) -> bool:
        return os.path.exists(os.path.join(SYSFS_NET, self._master, "bonding"))

    def active_slave(self) -> str:
        return self._read("active_slave")

    @staticmethod
    def bonds() -> list[str]:
        try:
            with open(BONDING_MASTERS) as handle:
                return handle.read().split()
        except FileNotFoundError:  # the bonding module is not loaded
            return []

    def _refuse(self, *_args: object, **_kwargs: object) -> None:
        raise NotAvailableError(
            "vdsm.network.link.bond.Bond changes", "vmhooks does not run oVirt's host networking"
        )

    create = destroy = add_slaves = del_slaves = set_options = up = down = refresh = _refuse
