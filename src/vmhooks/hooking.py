"""`vmhooks.hooking`: the hook authors' API (see vmhooks/hooklib/hooking.py)."""
from vmhooks.hooklib.hooking import *  # noqa: F401,F403
from vmhooks.hooklib.hooking import __all__  # noqa: F401
