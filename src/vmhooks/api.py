"""The agent's JSON-RPC 2.0 API over HTTP (`POST /rpc`) on a Unix socket.

Every request is handled in its own thread, so hook processes never run in
the thread that accepts connections. Methods are one table: name -> the
agent function and the parameters it takes.
"""
from __future__ import annotations

import grp
import http.server
import json
import logging
import os
import socket
import socketserver
import ssl
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.agent import DEVICE_OPERATIONS, Agent
from vmhooks.config import AgentSettings, split_address
from vmhooks.errors import ERROR_CODES, HookError, UsageError, VmhooksError

log = logging.getLogger("vmhooks.api")

MAX_REQUEST_BYTES = 16 << 20
MAX_BATCH = 100  # requests in one JSON-RPC batch
# What peer agents may call over TCP: the migration handshake, nothing else.
PEER_METHODS = frozenset({"VM.migrationCreate", "VM.migrationFinish"})
REQUEST_READ_TIMEOUT = 60.0  # seconds a client may take to send its request

# Stable error codes: JSON-RPC's own, then one per kind of vmhooks error.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class Param(NamedTuple):
    types: tuple[type, ...]
    required: bool = False


VM_ID = Param((str,), True)
DICT = Param((dict,))
STR = Param((str,))
INT = Param((int,))
DEVICE_PARAMS = {"vmId": VM_ID, "xml": Param((str,), True), "custom": DICT}


class Method(NamedTuple):
    function: Callable[..., Any]
    params: dict[str, Param]


def method_table(agent: Agent) -> dict[str, Method]:
    table = {
        "VM.create": Method(
            agent.create,
            {"xml": Param((str,), True), "vmId": STR, "custom": DICT, "deviceCustom": DICT,
             "launchPaused": Param((bool,))},
        ),
        "VM.destroy": Method(agent.destroy, {"vmId": VM_ID}),
        "VM.pause": Method(agent.pause, {"vmId": VM_ID}),
        "VM.cont": Method(agent.cont, {"vmId": VM_ID}),
        "VM.hibernate": Method(agent.hibernate, {"vmId": VM_ID}),
        "VM.dehibernate": Method(agent.dehibernate, {"vmId": VM_ID}),
        "VM.setTicket": Method(
            agent.setTicket,
            {"vmId": VM_ID, "password": Param((str,), True), "ttl": INT,
             "existingConnAction": STR, "params": DICT},
        ),
        "VM.setNumberOfCpus": Method(agent.setNumberOfCpus, {"vmId": VM_ID, "numberOfCpus": Param((int,), True)}),
        "VM.getStats": Method(agent.getStats, {"vmId": VM_ID}),
        "VM.getXML": Method(agent.getXML, {"vmId": VM_ID}),
        "VM.migrate": Method(agent.migrate, {"vmId": VM_ID, "dst": Param((str,), True)}),
        "VM.migrationCreate": Method(
            agent.migrationCreate,
            {"vmId": VM_ID, "xml": Param((str,), True), "custom": DICT, "deviceCustom": DICT},
        ),
        "VM.migrationFinish": Method(agent.migrationFinish, {"vmId": VM_ID, "success": Param((bool,), True)}),
        "VM.list": Method(agent.list_vms, {}),
        "Host.getCapabilities": Method(agent.getCapabilities, {}),
        "Host.getStats": Method(agent.getHostStats, {}),
        "Host.getAllVmStats": Method(agent.getAllVmStats, {}),
        "Host.getHookHistory": Method(
            agent.history,
            {"vmId": STR, "point": STR, "limit": INT, "before": INT, "since": Param((int, float)),
             "until": Param((int, float)), "failed": Param((bool,))},
        ),
        "Host.getHistoryVms": Method(agent.history_vms, {}),
        "Host.getHooks": Method(agent.hooks_inventory, {}),
    }  # fmt: skip
    for name in DEVICE_OPERATIONS:
        table[f"VM.{name}"] = Method(partial(agent.device_operation, name), DEVICE_PARAMS)
    return table


class Dispatcher:
    def __init__(self, methods: dict[str, Method]) -> None:
        self.methods = methods

    def handle_body(self, body: bytes) -> dict[str, Any] | list[dict[str, Any]] | None:
        """The response to one HTTP body (None: only notifications)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, PARSE_ERROR, f"request is not valid JSON: {exc}")
        except RecursionError:
            return _error(None, PARSE_ERROR, "request is nested too deeply")
        if isinstance(request, list):
            if not request:
                return _error(None, INVALID_REQUEST, "empty batch")
            if len(request) > MAX_BATCH:
                return _error(None, INVALID_REQUEST, f"batch of {len(request)} requests exceeds {MAX_BATCH}")
            responses = [r for r in (self.handle(item) for item in request) if r is not None]
            return responses or None
        return self.handle(request)

    def handle(self, request: object) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return _error(None, INVALID_REQUEST, 'not a JSON-RPC 2.0 request (needs "jsonrpc": "2.0")')
        request_id = request.get("id")
        notification = "id" not in request
        if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
            return _error(None, INVALID_REQUEST, "id must be a string, a number or null")
        response = self._call(request, request_id)
        return None if notification else response  # JSON-RPC: never answer a notification

    def _call(self, request: dict[str, Any], request_id: object) -> dict[str, Any]:
        name = request.get("method")
        if not isinstance(name, str):
            return _error(request_id, INVALID_REQUEST, "method must be a string")
        method = self.methods.get(name)
        if method is None:
            return _error(request_id, METHOD_NOT_FOUND, f"unknown method {name!r}")
        params = request.get("params", {})
        problem = _check_params(name, method, params)
        if problem:
            return _error(request_id, INVALID_PARAMS, problem)
        try:
            result = method.function(**params)
        except VmhooksError as exc:
            data: dict[str, Any] = {"kind": exc.kind}
            if isinstance(exc, HookError) and exc.result is not None:
                data["scripts"] = _failed_scripts(exc.result)
            return _error(request_id, ERROR_CODES.get(exc.kind, ERROR_CODES["error"]), str(exc), data)
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("%s failed", name)
            return _error(request_id, INTERNAL_ERROR, f"internal error in {name}: {exc}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _check_params(name: str, method: Method, params: object) -> str:
    if not isinstance(params, dict):
        return f"{name}: params must be an object"
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        return f"{name}: unknown param(s) {', '.join(unknown)}"
    for key, spec in method.params.items():
        if key not in params or params[key] is None:
            if spec.required:
                return f"{name}: missing param {key}"
            params.pop(key, None)
            continue
        value = params[key]
        if not isinstance(value, spec.types) or (bool not in spec.types and isinstance(value, bool)):
            kinds = "/".join(t.__name__ for t in spec.types)
            return f"{name}: param {key} must be {kinds}, not {type(value).__name__}"
    return ""


def _failed_scripts(result: Any) -> list[dict[str, Any]]:
    return [
        {"name": run.name, "status": str(run.status), "rc": run.rc, "stderr": run.stderr, "note": run.note}
        for run in result.scripts
        if run.failed
    ]


def _error(request_id: object, code: int, message: str, data: object = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class RequestHandler(http.server.BaseHTTPRequestHandler):
    server: UnixHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_READ_TIMEOUT  # a client that stalls mid-request is dropped
    server_version = "vmhooks"

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s", format % args)

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        if self.path != "/rpc":
            self._reply(404, _error(None, INVALID_REQUEST, f"no such path {self.path!r}; POST to /rpc"))
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not (length_header.isascii() and length_header.isdigit()):
            self._reply(411, _error(None, INVALID_REQUEST, "a Content-Length header is required"))
            return
        length = int(length_header)
        if length > MAX_REQUEST_BYTES:
            self._reply(413, _error(None, INVALID_REQUEST, f"request of {length} bytes exceeds 16 MiB"))
            self.close_connection = True
            return
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        response = self.server.dispatcher.handle_body(body)
        self._reply(200, response)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(405, _error(None, INVALID_REQUEST, "use POST /rpc"))

    def _reply(self, status: int, payload: object) -> None:
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.send_response(status if payload is not None or status != 200 else 204)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = False  # server_close() waits for requests in flight: nothing is cut off
    block_on_close = True
    request_queue_size = 128

    def __init__(self, path: Path, dispatcher: Dispatcher, group: str | None = None) -> None:
        self.dispatcher = dispatcher
        _remove_stale_socket(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)  # never, even briefly, a socket others can open
        try:
            super().__init__(str(path), RequestHandler)
        finally:
            os.umask(old_umask)
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                self.server_close()
                raise UsageError(f"socket group {group!r} does not exist") from None
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        self.path = path

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.server_address)  # type: ignore[arg-type]
        except OSError:
            pass


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a crashed agent is removed; a live agent is not displaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise UsageError(f"another agent is already serving on {path}")


class TlsHTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The same API over TCP for peers (migration): mutual TLS, nothing else.

    The TLS handshake runs in the connection's own thread with a timeout, so
    a peer that stalls it cannot block the accepting thread."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, context: ssl.SSLContext) -> None:
        self.dispatcher = dispatcher
        self.context = context
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_READ_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("refused a connection from %s: %s", client_address[0], exc)
            return
        try:
            RequestHandler(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s failed", client_address[0], exc_info=True)


def server_tls_context(settings: AgentSettings) -> ssl.SSLContext:
    if not (settings.tls_cert and settings.tls_key and settings.tls_ca):
        raise UsageError("--listen needs --tls-cert, --tls-key and --tls-ca (mutual TLS only)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no connection
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        context.load_verify_locations(cafile=str(settings.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate, key or CA: {exc}") from None
    return context


def make_servers(agent: Agent) -> list[socketserver.BaseServer]:
    """The Unix socket server, and the TLS one when --listen is set."""
    settings = agent.settings
    methods = method_table(agent)
    dispatcher = Dispatcher(methods)
    servers: list[socketserver.BaseServer] = []
    if settings.listen:
        host, port = split_address(settings.listen, "--listen")
        peers = Dispatcher({name: method for name, method in methods.items() if name in PEER_METHODS})
        try:
            servers.append(TlsHTTPServer((host, port), peers, server_tls_context(settings)))
        except OSError as exc:
            raise UsageError(f"cannot listen on {settings.listen}: {exc.strerror}") from None
    try:
        servers.append(UnixHTTPServer(settings.socket_path, dispatcher, settings.socket_group))
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return servers
