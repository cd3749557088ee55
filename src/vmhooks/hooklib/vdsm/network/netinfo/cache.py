"""`vdsm.network.netinfo.cache`: oVirt's network information. It is built
from supervdsm's report, which vmhooks does not run."""
from __future__ import annotations

from vdsm._compat import unavailable, unavailable_class

NetInfo = unavailable_class("vdsm.network.netinfo.cache.NetInfo")
get = unavailable("vdsm.network.netinfo.cache.get")
