"""HTTP serving with bounds, for every listener of the agent: a cap on
connections, an overall deadline to read a request and one to write an
answer, strict framing, back-off when out of file descriptors, and a
graceful stop.

One thread per connection (hooks never run in the accepting thread), at
most `max_connections` of them; `connections` tracks them and enforces the
deadlines."""
from __future__ import annotations

import errno
import functools
import http.server
import json
import logging
import math
import os
import re
import resource
import socket
import socketserver
import threading
import time
from collections.abc import Sequence
from typing import Any

from vmhooks.config import AgentSettings
from vmhooks.connections import Connection, Connections, Phase, ServerLimits
from vmhooks.rpc import INVALID_REQUEST, SERVER_BUSY, error_response

log = logging.getLogger("vmhooks.api")

MAX_REQUEST_LINE = 65536
WRITE_CHUNK = 256 << 10
FD_HEADROOM = 64  # descriptors kept for libvirt, SQLite, logs and hook processes
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 token


def json_error(message: str, code: int = INVALID_REQUEST) -> bytes:
    """An HTTP error's body: JSON-RPC's error object (the status is in the status line)."""
    return json.dumps(error_response(None, code, message)).encode()


# What a connection over the cap reads (when it fits the socket buffer) before it is closed.
BUSY_BODY = json_error("the agent is at its connection limit (max_connections): try again", SERVER_BUSY)
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(BUSY_BODY)).encode() + b"\r\n\r\n" + BUSY_BODY
)


class Throttled:
    """A warning for a condition that can recur thousands of times a second
    (refused connections): logged at most once a minute, with a count."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last = -math.inf
        self._count = 0

    def warn(self, message: str, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            more = f" ({self._count} times since the last such message)" if self._count > 1 else ""
            log.warning(message + more, *args)
            self._last, self._count = now, 0


def _spare_descriptor() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class BoundedServer(socketserver.BaseServer):
    """Put first among a socketserver server's bases (`class S(BoundedServer,
    socketserver.UnixStreamServer)`): one thread per connection, the cap,
    the deadlines (through `Connections`), back-off on EMFILE/ENFILE, and
    `stop_serving`. The handler must be a `BoundedHandler`. Connection
    threads are daemons: stop_serving bounds the wait, and a method still
    running must not hold the exit."""

    request_queue_size = 128
    busy_answer = BUSY_ANSWER  # sent without blocking to a connection over the cap; b"": just close it

    def __init__(self, limits: ServerLimits, name: str, *args: Any, **kwargs: Any) -> None:
        self.limits = limits
        self.name = name
        self.connections = Connections(limits, name)
        self._stopping = threading.Event()
        self._serving = False
        self._serve_lock = threading.Lock()
        self._backoff = 0.0
        self._spare_fd = _spare_descriptor()  # given up to accept and refuse when out of descriptors
        self._refusals = Throttled()
        self._no_descriptors = Throttled()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._release_extras()
            raise

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with self._serve_lock:
            if self._stopping.is_set():
                return
            self._serving = True
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop the accept loop (a no-op if it never ran: the stdlib's would wait forever)."""
        with self._serve_lock:
            self._stopping.set()  # also ends a back-off wait at once
            serving = self._serving
        if serving:
            super().shutdown()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = super().get_request()
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                self._out_of_descriptors(exc)
            raise  # socketserver drops it and selects again
        self._backoff = 0.0
        return request

    def _out_of_descriptors(self, exc: OSError) -> None:
        """Refuse the client at the head of the backlog (with the spare
        descriptor) rather than spin on a listening socket that stays
        readable, then wait a little longer each time."""
        self._no_descriptors.warn(
            "%s: cannot accept a connection: %s; refusing new ones until descriptors are free "
            "(raise LimitNOFILE or lower max_connections)", self.name, exc.strerror,
        )  # fmt: skip
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            try:
                sock, _ = self.socket.accept()
                self.refuse(sock)
            except OSError:
                pass
            self._spare_fd = _spare_descriptor()
        self._backoff = min(max(self._backoff * 2, 0.01), 1.0)
        self._stopping.wait(self._backoff)

    def process_request(self, request: Any, client_address: Any) -> None:
        connection = self.connections.admit(request, client_address)
        if connection is None:
            self._refusals.warn(
                "%s: refused a connection: %d connections open (max_connections)", self.name, len(self.connections)
            )
            self.refuse(request)
            return
        thread = threading.Thread(target=self._serve, args=(connection,), name=f"{self.name}-conn", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse rather than hold the socket
            self.connections.release(connection)

    def refuse(self, sock: socket.socket) -> None:
        """Over the cap: a short answer if it fits the socket buffer, then close."""
        try:
            if self.busy_answer:
                sock.setblocking(False)
                sock.send(self.busy_answer)
        except OSError:
            pass
        finally:
            sock.close()

    def _serve(self, connection: Connection) -> None:
        try:
            self.serve_connection(connection)
        except Exception:
            self.handle_error(connection.sock, connection.peer)
        finally:
            self.connections.release(connection)

    def serve_connection(self, connection: Connection) -> None:
        self.RequestHandlerClass(connection.sock, connection.peer, self, connection)  # type: ignore[call-arg]

    def handle_error(self, request: Any, client_address: Any) -> None:
        where = client_address[0] if isinstance(client_address, tuple) else "unix"
        log.error("%s: connection from %s failed", self.name, where, exc_info=log.isEnabledFor(logging.DEBUG))

    def server_close(self) -> None:
        """Close the listening socket; open connections are stop_serving's."""
        super().server_close()
        self._release_extras()

    def _release_extras(self) -> None:
        if not self.connections:
            self.connections.stop()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None


def stop_serving(servers: Sequence[BoundedServer], grace: float) -> list[Connection]:
    """Stop accepting, close idle and half-sent connections at once, let the
    requests in flight finish within `grace` seconds, then cut the rest.
    The connections whose request was still running (cut off)."""
    for server in servers:
        server.shutdown()
        server.server_close()  # the listening socket: new clients are refused by the kernel
    end = time.monotonic() + grace
    for server in servers:
        server.connections.drain(end)
    settle = end + 1.0  # a cut connection's thread needs a moment to notice
    left = [c for server in servers for c in server.connections.wait_closed(settle)]
    for server in servers:
        server.connections.stop()
    return [connection for connection in left if connection.phase is Phase.BUSY]


def limits_of(settings: AgentSettings, **overrides: Any) -> ServerLimits:
    """Every listener's limits, from the agent's settings."""
    limits = ServerLimits(max_connections=settings.max_connections, request_timeout=settings.request_timeout)
    return limits._replace(**overrides)


def check_descriptors(limits: ServerLimits, listeners: int) -> None:
    """Raise the soft RLIMIT_NOFILE to what the cap needs, up to the hard
    limit; warn when even that is short (accept then backs off on EMFILE)."""
    needed = limits.max_connections * listeners + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    if soft < needed:
        log.warning(
            "only %d file descriptors (ulimit -n): %d connections on %d listener(s) need about %d; "
            "raise LimitNOFILE or lower max_connections", soft, limits.max_connections, listeners, needed,
        )  # fmt: skip


@functools.cache
def _allowed_methods(handler: type) -> tuple[str, ...]:
    return tuple(sorted(name[3:] for name in dir(handler) if name.startswith("do_")))


class BoundedHandler(http.server.BaseHTTPRequestHandler):
    """Reads one request under the connection's deadline, with strict
    framing (one Content-Length, no Transfer-Encoding, a body cap), answers
    any method it has no `do_X` for with 405, and writes every answer,
    errors included, as JSON with a deadline proportional to its size."""

    server: BoundedServer
    protocol_version = "HTTP/1.1"
    server_version = "vmhooks"
    body = b""

    def __init__(self, request: Any, client_address: Any, server: BoundedServer, tracked: Connection) -> None:
        self.tracked = tracked
        self.timeout = server.limits.request_timeout  # per recv; the reaper enforces the whole
        super().__init__(request, client_address, server)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        if log.isEnabledFor(logging.DEBUG):  # once per request: format only when it is kept
            log.debug("%s", format % args)

    def handle_one_request(self) -> None:
        connections = self.server.connections
        connections.arm(self.tracked, Phase.WAITING, self.server.limits.request_timeout)
        self.close_connection = True  # until a whole request is in
        try:
            complete = self._read_request()
        except OSError:
            complete = False
        if not complete:
            self.close_connection = True
            return
        connections.arm(self.tracked, Phase.BUSY)
        getattr(self, f"do_{self.command}")()
        if connections.draining:
            self.close_connection = True

    def _read_request(self) -> bool:
        """Read the request line, headers and body, or answer why not (an
        error answer closes the connection: the stream cannot be trusted)."""
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not self.raw_requestline or self._was_cut():
            return False  # the client left, or idled past the deadline
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.send_error(414, "request line too long")
            return False
        if not self.parse_request() or self._was_cut():
            return False
        allowed = _allowed_methods(type(self))
        if self.command not in allowed:  # its body, if any, is never read
            self.send_error(405, f"method {self.command} is not allowed; use {', '.join(allowed)}")
            return False
        status, problem, length = self._framing()
        if problem:
            self.send_error(status, problem)
            return False
        self.body = self.rfile.read(length) if length else b""
        return len(self.body) == length and not self._was_cut()

    def _was_cut(self) -> bool:
        """Whether the reaper cut this connection mid-request (logged: a
        client that trickles its request is worth knowing about)."""
        reason = self.tracked.cut_reason
        if reason and not self.server.connections.draining:
            log.info("%s: closed a connection from %s: %s", self.server.name, self.address_string(), reason)
        return bool(reason)

    def _framing(self) -> tuple[int, str, int]:
        """(status, problem, body length): where the body ends, from the one
        Content-Length, or why that cannot be known for sure."""
        # The stdlib parser stops at a malformed line and keeps the rest as
        # "payload": the headers after it (a Content-Length) would be lost.
        if self.headers.defects or self.headers.get_payload():
            return 400, "malformed header line", 0
        if any(not HEADER_NAME.match(name) for name in self.headers.keys()):
            return 400, "malformed header name", 0
        if "Transfer-Encoding" in self.headers:
            return 400, "Transfer-Encoding is not supported: send one Content-Length", 0
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            return 400, "more than one Content-Length header", 0
        if not lengths:
            return (411, "a Content-Length header is required", 0) if self.command == "POST" else (0, "", 0)
        text = lengths[0].strip()
        if not (text.isascii() and text.isdigit()):
            return 400, "Content-Length must be a number of bytes", 0
        length = int(text)
        if length > self.server.limits.max_body:
            return 413, f"request of {length} bytes exceeds {self.server.limits.max_body >> 20} MiB", 0
        return 0, "", length

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error as JSON, never the standard library's HTML page."""
        text = message or self.responses.get(code, ("error",))[0]
        self.respond(code, json_error(text))

    def respond(
        self, status: int, body: bytes, content_type: str = "application/json", headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Write the whole answer within a deadline proportional to its size."""
        if self.tracked.cut_reason:
            return
        draining = self.server.connections.draining
        if draining or status >= 400:
            self.close_connection = True
        phrase = self.responses.get(status, ("",))[0]
        head = [f"{self.protocol_version} {status} {phrase}", f"Server: {self.version_string()}",
                f"Date: {self.date_time_string()}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}"]  # fmt: skip
        head.extend(f"{name}: {value}" for name, value in headers)
        if status == 405 and not any(name.lower() == "allow" for name, _ in headers):
            head.append(f"Allow: {', '.join(_allowed_methods(type(self)))}")
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        self.log_request(status, len(body))
        self._write(data)

    def _write(self, data: bytes) -> None:
        seconds = self.server.limits.write_seconds(len(data))
        self.server.connections.arm(self.tracked, Phase.WRITING, seconds)
        self.connection.settimeout(seconds)
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += self.connection.send(view[sent : sent + WRITE_CHUNK])
        except OSError as exc:
            self.close_connection = True
            reason = self.tracked.cut_reason or exc.strerror or type(exc).__name__
            level = logging.WARNING if self.tracked.cut_reason else logging.INFO
            log.log(level, "%s: answer to %s cut after %d of %d bytes: %s",
                    self.server.name, self.address_string(), sent, len(data), reason)  # fmt: skip
        finally:
            if not self.tracked.cut_reason:
                self.connection.settimeout(self.server.limits.request_timeout)
