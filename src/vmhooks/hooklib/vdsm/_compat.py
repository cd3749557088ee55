"""What the `vdsm` modules share: the error for oVirt services this host
does not run, and the agent's settings that the runner hands to hooks."""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, NoReturn


class NotAvailableError(RuntimeError):
    """A VDSM service that a vmhooks host does not have was used."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name} is not available on this host: {why}")
        self.name = name


OVIRT_NETWORKING = "vmhooks does not run oVirt's host networking (supervdsm, netswitch, persisted networks)"


def unavailable(name: str, why: str = OVIRT_NETWORKING) -> Callable[..., NoReturn]:
    """A function that raises NotAvailableError whatever it is given."""

    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotAvailableError(name, why)

    refuse.__name__ = name.rsplit(".", 1)[-1]
    refuse.__qualname__ = refuse.__name__
    return refuse


def unavailable_class(name: str, why: str = OVIRT_NETWORKING) -> type:
    """A class that can be named (isinstance, subclassing) but not built."""

    def __init__(self: object, *_args: Any, **_kwargs: Any) -> None:
        raise NotAvailableError(name, why)

    return type(name.rsplit(".", 1)[-1], (), {"__init__": __init__, "__module__": name.rsplit(".", 1)[0]})


def agent_setting(variable: str, default: str) -> str:
    """A setting the vmhooks runner gives hooks (VMHOOKS_* names cannot be
    set by custom properties), read when used, not when imported."""
    return os.environ.get(variable) or default
