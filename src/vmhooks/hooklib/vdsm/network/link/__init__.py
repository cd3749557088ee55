"""`vdsm.network.link`: see vdsm/network/__init__.py."""
