"""What each operation did and how it ended: one record in the history and
one log line per API call, libvirt event or recovery step, with the hook
chains it ran.

`CALLER` says who asked: the API server sets it for each request; events
and recovery name themselves. Recording never aborts an operation: a
history write that fails (a full disk) is logged, counted in the store's
counters and dropped."""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from vmhooks.agent.observers import OK, Observers, OperationOutcome
from vmhooks.config import AgentSettings
from vmhooks.errors import StateError, VmhooksError
from vmhooks.history import OperationRecord
from vmhooks.runner import ChainResult
from vmhooks.store import Store

log = logging.getLogger("vmhooks.agent")

# Who asked for the operation running in this context: "local" unless the
# API server says who its client is (e.g. "uid 0" or "peer host2.example").
CALLER: ContextVar[str] = ContextVar("vmhooks_caller", default="local")
_CURRENT: ContextVar[Operation | None] = ContextVar("vmhooks_operation", default=None)

MAINTENANCE_EVERY = 1000  # history writes between two prunings
ROW_BYTES = 300  # what a row costs besides its text, roughly
FAILURE_LOG_INTERVAL = 60.0  # seconds between two log lines about failing history writes

T = TypeVar("T")


class Operation:
    """One operation while it runs: what it concerns and what its hooks did."""

    def __init__(self, name: str, vm_id: str | None, vm_name: str | None, caller: str, polled: bool,
                 reason: str | None) -> None:  # fmt: skip
        self.name = name
        self.vm_id = vm_id
        self.vm_name = vm_name
        self.caller = caller
        self.polled = polled
        self.reason = reason
        self.started = time.time()
        self._clock = time.monotonic()
        self.row_id: int | None = None
        self.hooks_run = 0
        self.hooks_failed = 0
        self.on_identified: Callable[[Operation], None] | None = None

    def note_vm(self, vm_id: str, name: str | None = None) -> None:
        """The VM it concerns, once known (create learns it from the XML)."""
        if (vm_id, name or self.vm_name) == (self.vm_id, self.vm_name):
            return
        self.vm_id, self.vm_name = vm_id, name or self.vm_name
        if self.on_identified is not None:
            self.on_identified(self)

    def counted(self, result: ChainResult) -> None:
        self.hooks_run += len(result.scripts)
        self.hooks_failed += sum(run.failed for run in result.scripts)

    def record(self, error: BaseException | None = None, finished: bool = False) -> OperationRecord:
        result: str | None = None
        kind: str | None = None
        if finished:
            result, kind = describe(error)
        return OperationRecord(
            self.started, self.name, self.vm_id, self.vm_name, self.caller, self.polled, result, kind, self.reason,
            time.monotonic() - self._clock if finished else None, self.hooks_run, self.hooks_failed,
        )  # fmt: skip


def describe(error: BaseException | None) -> tuple[str, str | None]:
    """An operation's result and the error's kind."""
    if error is None:
        return "ok", None
    if isinstance(error, VmhooksError):
        return str(error) or error.kind, error.kind
    return f"internal error: {type(error).__name__}: {error}", "internal"


def current() -> Operation | None:
    return _CURRENT.get()


def note_vm(vm_id: str, name: str | None = None) -> None:
    """The operation running here concerns this VM (the registry tells)."""
    operation = _CURRENT.get()
    if operation is not None:
        operation.note_vm(vm_id, name)


class Recorder:
    """Writes operations and their chains to the history, never raising,
    and keeps the history within its bounds (age, size, polled rows)."""

    def __init__(self, store: Store, settings: AgentSettings) -> None:
        self.store = store
        self.settings = settings
        self.started = time.time()
        self._lock = threading.Lock()
        self._maintaining = threading.Lock()
        self._in_flight: set[Operation] = set()
        self._revisions = itertools.count(1)
        self.revision = 0  # moves at every history write: what the console's live refresh watches
        self._idle = threading.Condition(threading.Lock())
        self._writes = 0
        self._bytes = 0
        self._failure_logged = 0.0
        self._failures_unlogged = 0
        self.observers = Observers()  # told of every chain and every operation's end (the metrics)

    @property
    def max_bytes(self) -> int:
        return int(self.settings.history_max_mb * (1 << 20))

    @contextmanager
    def operation(
        self,
        name: str,
        vm_id: str | None = None,
        *,
        vm_name: str | None = None,
        caller: str | None = None,
        polled: bool = False,
        reason: str | None = None,
    ) -> Iterator[Operation]:
        """Record what runs inside as one operation (inside another one, it
        is part of that one). Polled operations are kept only when a hook ran."""
        outer = _CURRENT.get()
        if outer is not None:
            yield outer
            return
        operation = Operation(name, vm_id, vm_name, caller or CALLER.get(), polled, reason)
        token = _CURRENT.set(operation)
        with self._idle:
            self._in_flight.add(operation)
        try:
            if not polled:
                self._begin(operation)
                # An agent that dies during it leaves its row naming the VM.
                operation.on_identified = self._identified
            yield operation
        except BaseException as exc:
            self._finish(operation, exc)
            raise
        else:
            self._finish(operation, None)
        finally:
            _CURRENT.reset(token)
            with self._idle:
                self._in_flight.discard(operation)
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> list[Operation]:
        """Wait up to `timeout` seconds for the operations in flight to end;
        those still running then."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            return list(self._in_flight)

    def chain(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        """A chain HookCalls ran, as part of the current operation. A chain
        that ran no script leaves nothing (its warnings included)."""
        current = _CURRENT.get()
        if current is not None:
            current.counted(result)
        if not result.scripts:
            return
        self.observers.chain_recorded(operation, vm_id, result)  # whether or not the write below works
        if current is None:
            self._write(self.store.record_chain, operation, vm_id, result)
            self._wrote(_text_bytes(result))
            return
        if current.row_id is None:
            self._begin(current)
        if current.row_id is not None:
            self._write(self.store.add_chain, current.row_id, operation, vm_id, result, current.record())
            self._wrote(_text_bytes(result))

    def _begin(self, operation: Operation) -> None:
        operation.row_id = self._write(self.store.begin_operation, operation.record())
        self._wrote(0)

    def _identified(self, operation: Operation) -> None:
        if operation.row_id is not None:
            self._write(self.store.finish_operation, operation.row_id, operation.record())

    def _finish(self, operation: Operation, error: BaseException | None) -> None:
        record = operation.record(error, finished=True)
        if operation.row_id is not None:
            self._write(self.store.finish_operation, operation.row_id, record)
        elif not operation.polled or operation.hooks_run:
            self._write(self.store.begin_operation, record)
        _log(record)
        self.observers.operation_finished(
            OperationOutcome(record.operation, record.vm_id, record.error_kind or OK, record.duration_s or 0.0)
        )
        if self._writes >= MAINTENANCE_EVERY or self._bytes >= max(self.max_bytes // 32, 256 << 10):
            self.maintain()

    def _wrote(self, text_bytes: int) -> None:
        with self._lock:
            self._writes += 1
            self._bytes += text_bytes + ROW_BYTES

    def _write(self, function: Callable[..., T], *args: object) -> T | None:
        try:
            return function(*args)
        except StateError as exc:
            self._failed(exc)
            return None
        finally:
            self.revision = next(self._revisions)  # two writers never draw the same number

    def _failed(self, exc: StateError) -> None:
        """Logged at most once a minute, with how many went unlogged."""
        with self._lock:
            now = time.monotonic()
            if now - self._failure_logged < FAILURE_LOG_INTERVAL and self._failure_logged:
                self._failures_unlogged += 1
                return
            unlogged, self._failures_unlogged, self._failure_logged = self._failures_unlogged, 0, now
        more = f" ({unlogged} more since the last such line)" if unlogged else ""
        log.error("the history could not be written, the operation goes on: %s%s", exc, more)

    def maintain(self) -> None:
        """Prune by age, thin polled operations, prune to the size limit."""
        if not self._maintaining.acquire(blocking=False):
            return  # another thread is at it
        try:
            with self._lock:
                self._writes = self._bytes = 0
            self.store.prune(time.time() - self.settings.history_days * 86400)
            self.store.prune_polled()
            pruned = self.store.prune_to_size(self.max_bytes, self.started)
        except StateError as exc:
            self._failed(exc)
            return
        finally:
            self._maintaining.release()
        if pruned.operations:
            log.info("history over %g MiB: forgot its %d oldest operations", self.settings.history_max_mb,
                     pruned.operations)  # fmt: skip


def _text_bytes(result: ChainResult) -> int:
    return sum(len(run.stderr) + len(run.diff) for run in result.scripts)


def _log(record: OperationRecord) -> None:
    target = f"VM {record.vm_name or '?'} ({record.vm_id})" if record.vm_id else "host"
    why = f" [{record.reason}]" if record.reason else ""
    level = logging.DEBUG if record.polled else logging.INFO
    log.log(
        level, "%s %s by %s%s: %s in %.3f s; hooks: %d run, %d failed", record.operation, target, record.caller, why,
        record.result, record.duration_s or 0.0, record.hooks_run, record.hooks_failed,
        extra={"outcome": record._asdict()},
    )  # fmt: skip
