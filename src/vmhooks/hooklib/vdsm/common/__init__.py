"""`vdsm.common`: see vdsm/__init__.py."""
