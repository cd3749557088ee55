"""Every error vmhooks raises on purpose; each carries one user-facing line."""
from __future__ import annotations


# The stable code of each kind of error: the API's `error.code`, and the CLI's
# with --json. JSON-RPC's own codes (-32700...) are the API's alone.
ERROR_CODES = {
    "hook_error": 1,
    "no_such_vm": 2,
    "bad_request": 3,
    "libvirt_error": 4,
    "not_supported": 5,
    "wrong_state": 6,
    "error": 7,
}


class VmhooksError(Exception):
    """Base class: str(error) is the one line shown to the user."""

    kind = "error"
    exit_status: int | None = None  # the CLI's exit status, when not the usual one


class UsageError(VmhooksError):
    """Bad input from the caller: unknown point, bad property, unreadable file."""

    kind = "bad_request"


class UnknownPointError(UsageError, ValueError):
    """Also a ValueError: upstream refuses bad point names with one."""


class InvalidEnvironmentError(UsageError):
    """A param or custom property name or value that may not reach a hook."""


class HookError(VmhooksError):
    """A hook chain failed at a point whose failure aborts the operation."""

    kind = "hook_error"

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result  # the ChainResult, when there is one


class NoSuchVmError(VmhooksError):
    kind = "no_such_vm"


class WrongStateError(VmhooksError):
    """The VM is not in a state that allows the operation (e.g. pause a paused VM)."""

    kind = "wrong_state"


class LibvirtError(VmhooksError):
    """libvirt refused the operation; the message carries libvirt's reason."""

    kind = "libvirt_error"


class NotSupportedError(VmhooksError):
    """The libvirt driver in use does not implement the operation."""

    kind = "not_supported"


class StateError(VmhooksError):
    """The agent's state database cannot be opened, read or written (disk full, I/O error)."""


class CorruptStateError(StateError):
    """The state database is not one vmhooks can use: the agent must not
    start, and systemd must not restart it in a loop (EX_CONFIG)."""

    exit_status = 78
