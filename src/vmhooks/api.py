"""The agent's API: its JSON-RPC method table, served over HTTP (`POST
/rpc`) on a Unix socket, and to peer agents over TCP with mutual TLS.

The protocol is `rpc`; connection limits, deadlines and the graceful stop
are `httpserver`'s, shared by every listener."""
from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import socketserver
import ssl
import stat
import struct
from functools import partial
from pathlib import Path
from typing import Any

from vmhooks.agent import DEVICE_OPERATIONS, Agent
from vmhooks.agent.outcome import CALLER
from vmhooks.agent.vmlock import OFFERED_TOKEN, offered_token
from vmhooks.config import AgentSettings, split_address
from vmhooks.environment import LOCK_TOKEN_HEADER
from vmhooks.errors import UsageError
from vmhooks.connections import Connection, Phase, ServerLimits
from vmhooks.httpserver import BoundedHandler, BoundedServer, json_error, limits_of
from vmhooks.rpc import Dispatcher, Method, Param

log = logging.getLogger("vmhooks.api")

# What peer agents may call over TCP: the migration handshake, nothing else.
PEER_METHODS = frozenset({"VM.migrationCreate", "VM.migrationFinish"})

VM_ID = Param((str,), True)
DICT = Param((dict,))
STR = Param((str,))
INT = Param((int,))
DEVICE_PARAMS = {"vmId": VM_ID, "xml": Param((str,), True), "custom": DICT}


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


class RpcHandler(BoundedHandler):
    """POST /rpc: one JSON-RPC body in, its response out. Any other method
    gets 405 (`BoundedHandler`), any other path 404."""

    server: RpcServer
    caller: str | None = None  # once per connection: the peer cannot change, and a user lookup may be slow (NSS)

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        if self.path != "/rpc":
            self.respond(404, json_error(f"no such path {self.path!r}; POST to /rpc"))
            return
        if self.caller is None:
            self.caller = self.server.caller_of(self.request, self.client_address)
        who = CALLER.set(self.caller)
        offered = OFFERED_TOKEN.set(offered_token(self.headers.get(LOCK_TOKEN_HEADER)) if self.server.lends_locks else None)
        try:
            response = self.server.dispatcher.handle_body(self.body)
        finally:
            OFFERED_TOKEN.reset(offered)
            CALLER.reset(who)
        if response is None:  # only notifications
            self.respond(204, b"")
        else:
            self.respond(200, json.dumps(response).encode("utf-8"))


class RpcServer(BoundedServer):
    dispatcher: Dispatcher
    lends_locks = False  # whether a hook's lock token is heard (local hooks only)

    def caller_of(self, sock: Any, address: Any) -> str:
        """Who is on the other end, for the history and the log."""
        raise NotImplementedError


PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_CALLER_CHARS = 200


def printable(text: str) -> str:
    """A caller's self-chosen part (a user or certificate name), safe for
    one log line: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_CALLER_CHARS])


class UnixHTTPServer(RpcServer, socketserver.UnixStreamServer):
    lends_locks = True

    def __init__(self, path: Path, dispatcher: Dispatcher, limits: ServerLimits, group: str | None = None) -> None:
        self.dispatcher = dispatcher
        self.path = path
        _remove_stale_socket(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)  # never, even briefly, a socket others can open
        try:
            super().__init__(limits, "api", str(path), RpcHandler)
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

    def caller_of(self, sock: Any, address: Any) -> str:
        """The client's uid, user and pid as the kernel saw them at connect()."""
        try:
            pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
        except OSError:
            return "unix socket"
        try:
            user = printable(pwd.getpwuid(uid).pw_name)
        except KeyError:
            return f"uid {uid} pid {pid}"
        return f"uid {uid} ({user}) pid {pid}"

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.path)
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


class TlsHTTPServer(RpcServer, socketserver.TCPServer):
    """The same API over TCP for peers (migration): mutual TLS, nothing else.

    The TLS handshake runs in the connection's own thread under the request
    deadline, so a peer that stalls it holds one connection slot, for a
    bounded time, and never the accepting thread. Over the cap a connection
    is closed at once: no answer can be sent before a handshake."""

    allow_reuse_address = True
    busy_answer = b""

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, context: ssl.SSLContext,
                 limits: ServerLimits) -> None:  # fmt: skip
        self.dispatcher = dispatcher
        self.context = context
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(limits, "peers", address, RpcHandler)

    def serve_connection(self, connection: Connection) -> None:
        connection.sock.settimeout(self.limits.request_timeout)
        tls = self.context.wrap_socket(connection.sock, server_side=True, do_handshake_on_connect=False)
        connection.replace_socket(tls)  # the reaper now cuts the TLS socket's descriptor
        self.connections.arm(connection, Phase.HANDSHAKE, self.limits.request_timeout)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            # The socket's own timeout may fire before the reaper's cut: the same deadline.
            reason = connection.cut_reason or (Phase.HANDSHAKE.value if isinstance(exc, TimeoutError) else exc)
            log.warning("refused a connection from %s: %s", connection.peer[0], reason)
            return
        super().serve_connection(connection)

    def caller_of(self, sock: Any, address: Any) -> str:
        """The peer's certificate name (verified against --tls-ca) and address."""
        names = [value for rdn in (sock.getpeercert() or {}).get("subject", ()) for key, value in rdn
                 if key == "commonName"]  # fmt: skip
        return f"peer {printable(names[0]) if names else '(no common name)'} at {address[0]}"


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


def make_servers(agent: Agent) -> list[RpcServer]:
    """The Unix socket server, and the TLS one when --listen is set."""
    settings = agent.settings
    limits = limits_of(settings)
    methods = method_table(agent)
    servers: list[RpcServer] = []
    if settings.listen:
        host, port = split_address(settings.listen, "--listen")
        peers = Dispatcher({name: method for name, method in methods.items() if name in PEER_METHODS})
        try:
            servers.append(TlsHTTPServer((host, port), peers, server_tls_context(settings), limits))
        except OSError as exc:
            raise UsageError(f"cannot listen on {settings.listen}: {exc.strerror}") from None
    try:
        servers.append(UnixHTTPServer(settings.socket_path, Dispatcher(methods), limits, settings.socket_group))
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return servers
