"""`vdsm.common.libvirtconnection`: the libvirt connection of the agent
that runs the hook.

`get()` opens the agent's own libvirt URI, which the vmhooks runner hands
to hooks as `VMHOOKS_LIBVIRT_URI` (VDSM's `qemu:///system` when the hook
runs outside the agent), once per process and target. libvirt-python is
imported on first use, so hooks that never connect do not need it.
"""
from __future__ import annotations

import threading

from vdsm._compat import agent_setting

TYPE_CHECKING = False
if TYPE_CHECKING:
    import libvirt

DEFAULT_URI = "qemu:///system"
_connections: dict[int, libvirt.virConnect] = {}
_lock = threading.Lock()


def agent_uri() -> str:
    return agent_setting("VMHOOKS_LIBVIRT_URI", DEFAULT_URI)


def _libvirt():  # type: ignore[no-untyped-def]
    try:
        import libvirt
    except ImportError:
        import sys

        raise ImportError(
            f"vdsm.common.libvirtconnection needs libvirt-python for {sys.executable} "
            "(Debian: python3-libvirt)"
        ) from None
    return libvirt


def open_connection(uri: str | None = None, username: str | None = None, passwd: object = None) -> libvirt.virConnect:
    """A new connection to `uri` (default: the agent's). Credentials are
    not asked for: the agent's URI is one its own user may open."""
    return _libvirt().open(uri or agent_uri())


def get(target: object = None, killOnFailure: bool = True) -> libvirt.virConnect:  # noqa: N803
    """This process's connection for `target` (None: the shared one),
    opened on first use. Lifecycle events are the agent's own: no callback
    is registered for `target`."""
    with _lock:
        conn = _connections.get(id(target))
        if conn is None:
            conn = _connections[id(target)] = open_connection()
        return conn


def _clear() -> None:
    with _lock:
        _connections.clear()
