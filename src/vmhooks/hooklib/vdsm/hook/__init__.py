"""`vdsm.hook`: see vdsm/__init__.py."""
