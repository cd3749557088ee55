"""`vdsm.network.netinfo`: oVirt's view of the host's networks (its `cache`
submodule is imported with it, as hooks use `netinfo.cache.NetInfo`)."""
from vdsm.network.netinfo import cache  # noqa: F401
