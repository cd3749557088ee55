"""The open connections of a server: each one's phase and deadline, the
cap, and the reaper thread that enforces every deadline.

A deadline is enforced by shutting the late connection's socket down,
which wakes its thread whatever it is blocked in (TLS handshake, recv,
send): no per-call timeout can bound a whole request, and a thread cannot
be interrupted otherwise."""
from __future__ import annotations

import enum
import math
import socket
import threading
import time
from typing import Any, NamedTuple


class ServerLimits(NamedTuple):
    max_connections: int = 128  # per listener; over it, a connection is refused at once
    request_timeout: float = 30.0  # from waiting for a request to having all of it
    max_body: int = 16 << 20
    min_write_rate: int = 256 << 10  # bytes/s: a reader slower than this is cut off

    def write_seconds(self, size: int) -> float:
        """How long writing `size` bytes may take: proportional to the size."""
        return self.request_timeout + size / self.min_write_rate


class Phase(enum.Enum):
    HANDSHAKE = "no TLS handshake within the request timeout"
    WAITING = "no complete request within the request timeout"
    BUSY = "its request was still running when the shutdown grace ended"
    WRITING = "the client did not read the answer in time"


CUT_ON_DRAIN = frozenset({Phase.HANDSHAKE, Phase.WAITING})  # no request in flight: close at once


class Connection:
    """One accepted socket: its phase, its deadline, and why it was cut."""

    __slots__ = ("sock", "peer", "phase", "deadline", "cut_reason", "_closed", "_lock")

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.phase = Phase.WAITING
        self.deadline = math.inf
        self.cut_reason = ""
        self._closed = False
        self._lock = threading.Lock()  # never shut down a descriptor number already reused

    def cut(self, reason: str) -> None:
        """Shut the socket down: whatever its thread is blocked in returns."""
        with self._lock:
            if self._closed or self.cut_reason:
                return
            self.cut_reason = reason
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the fd's, not TLS's
            except OSError:
                pass

    def replace_socket(self, sock: socket.socket) -> None:
        """Track `sock` instead (a TLS socket over the same descriptor)."""
        with self._lock:
            self.sock = sock
            if self.cut_reason:  # cut in between: the old object had let go of the descriptor
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class Connections:
    """The open connections of one server, the cap, and the reaper thread
    that cuts those past their deadline."""

    def __init__(self, limits: ServerLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self._open: set[Connection] = set()
        self._changed = threading.Condition()
        self._drain_end: float | None = None
        self._wake_at = math.inf
        self._stopped = False
        self._reaper = threading.Thread(target=self._reap, name=f"{name}-reaper", daemon=True)
        self._reaper.start()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, sock: socket.socket, peer: Any) -> Connection | None:
        """A tracked connection, or None when at the cap or stopping."""
        with self._changed:
            if len(self._open) >= self.limits.max_connections or self._drain_end is not None:
                return None
            connection = Connection(sock, peer)
            self._open.add(connection)
            self._arm(connection, Phase.WAITING, self.limits.request_timeout)
            return connection

    def arm(self, connection: Connection, phase: Phase, seconds: float = math.inf) -> None:
        """Enter `phase`, which must end within `seconds`."""
        with self._changed:
            self._arm(connection, phase, seconds)

    def _arm(self, connection: Connection, phase: Phase, seconds: float) -> None:
        now = time.monotonic()
        deadline = now + seconds
        if self._drain_end is not None:
            deadline = now if phase in CUT_ON_DRAIN else min(deadline, self._drain_end)
        connection.phase = phase
        connection.deadline = deadline
        if deadline < self._wake_at:
            self._changed.notify_all()

    def release(self, connection: Connection) -> None:
        with self._changed:
            self._open.discard(connection)
            self._changed.notify_all()
        connection.close()

    @property
    def draining(self) -> bool:
        return self._drain_end is not None

    def drain(self, end: float) -> None:
        """Close every connection with no request in flight now; the others
        when their answer is written, or at `end` at the latest."""
        with self._changed:
            self._drain_end = end
            now = time.monotonic()
            for connection in self._open:
                connection.deadline = now if connection.phase in CUT_ON_DRAIN else min(connection.deadline, end)
            self._changed.notify_all()

    def wait_closed(self, until: float) -> list[Connection]:
        """Wait until every connection is gone, or `until`: those left."""
        with self._changed:
            while self._open and (left := until - time.monotonic()) > 0:
                self._changed.wait(left)
            return list(self._open)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _reap(self) -> None:
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                nearest = math.inf
                for connection in self._open:
                    if connection.deadline <= now:
                        connection.deadline = math.inf
                        connection.cut(connection.phase.value)
                    else:
                        nearest = min(nearest, connection.deadline)
                self._wake_at = nearest
                self._changed.wait(None if nearest == math.inf else nearest - now)
