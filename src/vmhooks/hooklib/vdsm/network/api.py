"""`vdsm.network.api`: VDSM's host network API. Only its constant is real:
setting networks up belongs to oVirt's supervdsm, which vmhooks does not run."""
from __future__ import annotations

from vdsm._compat import unavailable
from vdsm.network.ipwrapper import DUMMY_BRIDGE

__all__ = ["DUMMY_BRIDGE", "network_caps", "network_stats", "setupNetworks", "change_numvfs"]

network_caps = unavailable("vdsm.network.api.network_caps")
network_stats = unavailable("vdsm.network.api.network_stats")
setupNetworks = unavailable("vdsm.network.api.setupNetworks")  # noqa: N816 (VDSM's name)
change_numvfs = unavailable("vdsm.network.api.change_numvfs")
network_northbound = unavailable("vdsm.network.api.network_northbound")
