"""What the agent tells whoever watches it (the web console's metrics):
each hook chain that ran a script, and each operation's outcome, both
from where the agent records them (`outcome.Recorder`).

The agent knows only the `AgentObserver` Protocol; observers register
themselves (`Agent.observers.add`), so nothing in the agent imports them.
An observer that raises is logged and never disturbs the operation or the
other observers."""
from __future__ import annotations

import logging
import threading
from typing import NamedTuple, Protocol

from vmhooks.runner import ChainResult

log = logging.getLogger("vmhooks.agent")

OK = "ok"  # an operation's result when it succeeded; else the error's kind


class OperationOutcome(NamedTuple):
    operation: str  # the agent's name for it: create, pause, hotplugNic, getStats...
    vm_id: str | None  # None for host operations
    result: str  # "ok", or the kind of the error it raised (hook_error, libvirt_error...)
    duration_s: float


class AgentObserver(Protocol):
    def chain_recorded(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        """A chain ran (at least one script, or a refusal) and is in the history."""

    def operation_finished(self, outcome: OperationOutcome) -> None:
        """An operation asked of the agent ended, well or not."""


class Observers:
    """The registered observers, called in the order they were added."""

    def __init__(self) -> None:
        self._observers: tuple[AgentObserver, ...] = ()
        self._lock = threading.Lock()

    def add(self, observer: AgentObserver) -> None:
        with self._lock:  # a new tuple: callers iterating meanwhile are unaffected
            self._observers = (*self._observers, observer)

    def remove(self, observer: AgentObserver) -> None:
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def chain_recorded(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        for observer in self._observers:
            try:
                observer.chain_recorded(operation, vm_id, result)
            except Exception:
                log.exception("observer %r failed on a chain of %s", observer, result.point.name)

    def operation_finished(self, outcome: OperationOutcome) -> None:
        for observer in self._observers:
            try:
                observer.operation_finished(outcome)
            except Exception:
                log.exception("observer %r failed on operation %s", observer, outcome.operation)
