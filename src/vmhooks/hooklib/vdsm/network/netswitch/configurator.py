"""`vdsm.network.netswitch.configurator`: applying and reporting oVirt
networks, which vmhooks does not manage."""
from __future__ import annotations

from vdsm._compat import unavailable

netinfo = unavailable("vdsm.network.netswitch.configurator.netinfo")
setup = unavailable("vdsm.network.netswitch.configurator.setup")
netcaps = unavailable("vdsm.network.netswitch.configurator.netcaps")
