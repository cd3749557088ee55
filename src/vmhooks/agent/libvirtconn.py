"""The libvirt connection: opening it with lifecycle events on, and turning
libvirt's exceptions into vmhooks errors that name libvirt's reason."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from vmhooks.errors import LibvirtError, NotSupportedError

T = TypeVar("T")

_NOT_SUPPORTED = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    getattr(libvirt, "VIR_ERR_OPERATION_UNSUPPORTED", 84),
}
NO_DOMAIN = libvirt.VIR_ERR_NO_DOMAIN

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


def start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread, once per process
    (it must be registered before the first connection is opened)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(_silence, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def open_connection(uri: str) -> libvirt.virConnect:
    start_event_loop()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"cannot connect to libvirt at {uri!r}: {exc.get_error_message()}") from None


def call(what: str, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, with libvirt's failure as one line naming `what`."""
    try:
        return function(*args)
    except libvirt.libvirtError as exc:
        raise translate(what, exc) from None


def translate(what: str, exc: libvirt.libvirtError) -> LibvirtError | NotSupportedError:
    message = exc.get_error_message() or str(exc)
    if exc.get_error_code() in _NOT_SUPPORTED:
        return NotSupportedError(f"{what}: not supported by this libvirt driver ({message})")
    return LibvirtError(f"{what}: libvirt: {message}")


def lookup(conn: libvirt.virConnect, vm_id: str) -> libvirt.virDomain | None:
    """The domain with this UUID, or None when libvirt does not have it."""
    try:
        return conn.lookupByUUIDString(vm_id)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == NO_DOMAIN:
            return None
        raise translate(f"looking up VM {vm_id}", exc) from None


def is_active(domain: libvirt.virDomain | None) -> bool:
    if domain is None:
        return False
    try:
        return bool(domain.isActive())
    except libvirt.libvirtError:
        return False


def status_of(domain: libvirt.virDomain) -> str:
    """Our status word for a live domain."""
    state, _reason = domain.state()
    if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
        return "paused"
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_NOSTATE):
        return "down"
    return "up"
