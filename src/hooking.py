"""Top-level `hooking`, so `import hooking` works wherever vmhooks is installed."""
from vmhooks.hooklib.hooking import *  # noqa: F401,F403
from vmhooks.hooklib.hooking import __all__  # noqa: F401
