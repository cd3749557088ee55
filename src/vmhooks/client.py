"""The JSON-RPC client the CLI (and anyone in Python) uses to talk to the agent."""
from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from vmhooks.config import split_address
from vmhooks.environment import LOCK_TOKEN_HEADER, LOCK_TOKEN_VARIABLE
from vmhooks.errors import VmhooksError

DEFAULT_TIMEOUT = 900.0  # an operation may run several hook chains with timeouts


class AgentUnreachable(VmhooksError):
    pass


class RpcError(VmhooksError):
    """An error object returned by the agent."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
        self.kind = data.get("kind", "error") if isinstance(data, dict) else "error"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def client_tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Mutual TLS: present our certificate, accept only servers signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


class Client:
    """JSON-RPC to an agent: on its Unix socket, or at HOST:PORT over mutual TLS."""

    def __init__(
        self, socket_path: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
        *, address: str | None = None, tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        if (socket_path is None) == (address is None) or (address is not None and tls is None):
            raise ValueError("give a socket path, or an address with a TLS context")
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.address = address
        self.tls = tls
        self.timeout = timeout
        self._ids = itertools.count(1)

    @property
    def where(self) -> str:
        return str(self.socket_path) if self.socket_path is not None else f"{self.address} (TLS)"

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixConnection(self.socket_path, self.timeout)
        assert self.address is not None
        host, port = split_address(self.address, "agent address")
        return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.tls)

    def call(self, method: str, **params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        body = json.dumps(request).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(LOCK_TOKEN_VARIABLE) if self.socket_path is not None else None
        if token:  # run by a hook: it may act on the VM whose operation runs it
            headers[LOCK_TOKEN_HEADER] = token
        connection = self._connection()
        try:
            try:
                connection.request("POST", "/rpc", body, headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # an agent at its connection cap answers 503 and closes before reading: read that
            response = connection.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnreachable(
                f"no agent at {self.where} ({exc.strerror}); start one with 'vmhooks serve'"
            ) from None
        except PermissionError:
            raise AgentUnreachable(f"not allowed to talk to the agent at {self.where}") from None
        except ssl.SSLError as exc:
            raise AgentUnreachable(f"TLS with the agent at {self.where} failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(f"talking to the agent at {self.where} failed: {exc}") from None
        finally:
            connection.close()
        try:
            reply = json.loads(data)
        except ValueError:
            raise AgentUnreachable(f"the agent sent a reply that is not JSON (HTTP {response.status})") from None
        if "error" in reply:
            error = reply["error"]
            raise RpcError(error.get("code", 0), error.get("message", "unknown error"), error.get("data"))
        return reply.get("result")
