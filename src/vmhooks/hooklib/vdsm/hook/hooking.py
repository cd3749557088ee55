"""`from vdsm.hook import hooking` for hooks written against upstream VDSM."""
from hooking import *  # noqa: F401,F403
from hooking import __all__  # noqa: F401
