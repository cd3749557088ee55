"""The JSON-RPC client the CLI (and anyone in Python) uses to talk to the agent."""
from __future__ import annotations

import http.client
import itertools
import json
import socket
from pathlib import Path
from typing import Any

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


class Client:
    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        body = json.dumps(request).encode("utf-8")
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request("POST", "/rpc", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnreachable(
                f"no agent at {self.socket_path} ({exc.strerror}); start one with 'vmhooks serve'"
            ) from None
        except PermissionError:
            raise AgentUnreachable(f"not allowed to talk to the agent at {self.socket_path}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(f"talking to the agent at {self.socket_path} failed: {exc}") from None
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
