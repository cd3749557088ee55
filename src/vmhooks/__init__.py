"""vmhooks: VDSM-compatible VM lifecycle hooks on libvirt."""
__version__ = "0.1.0"
