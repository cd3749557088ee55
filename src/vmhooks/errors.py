"""Every error vmhooks raises on purpose; each carries one user-facing line."""
from __future__ import annotations


class VmhooksError(Exception):
    """Base class: str(error) is the one line shown to the user."""

    kind = "error"


class UsageError(VmhooksError):
    """Bad input from the caller: unknown point, bad property, unreadable file."""

    kind = "bad_request"


class UnknownPointError(UsageError):
    pass


class InvalidEnvironmentError(UsageError):
    """A param or custom property name or value that may not reach a hook."""


class HookError(VmhooksError):
    """A hook chain failed at a point whose failure aborts the operation."""

    kind = "hook_error"

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result  # the ChainResult, when there is one
