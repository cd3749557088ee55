"""`vdsm.network.netswitch`: oVirt's network configurators (its
`configurator` submodule is imported with it, as hooks use it)."""
from vdsm.network.netswitch import configurator  # noqa: F401
