"""`vdsm.client`: a JSON-RPC client of the local agent, with VDSM's verbs.

`connect()` returns a client of the vmhooks agent that runs the hook (its
socket is handed to hooks as `VMHOOKS_SOCKET`). Calls read as on VDSM,
`cli.VM.cont(vmID=...)`, `cli.Host.getStats()`: the namespace and verb are
the method name, keyword arguments its parameters. VDSM's `vmID` is sent as
vmhooks' `vmId`, and `Host.getVMList` is answered from `VM.list`. Errors
are VDSM's: ConnectionError, ClientError, TimeoutError, ServerError.
Standard library only; nothing is opened before the first call.
"""
from __future__ import annotations

from vdsm._compat import agent_setting

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PORT = 54321
DEFAULT_SOCKET = "/run/vmhooks/vmhooks.sock"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain", ""})
# VDSM parameter names that vmhooks spells otherwise.
RENAMED_PARAMS = {"vmID": "vmId"}
# vmhooks' VM statuses as VDSM's VmStatus names them (hooks compare with "Up"):
# agent/reports.VDSM_STATUS spelt out, as this package imports no vmhooks module.
VDSM_STATUS = {"up": "Up", "paused": "Paused", "starting": "WaitForLaunch", "migrating": "Migration Source",
               "incoming": "Migration Destination", "hibernated": "Down", "down": "Down"}  # fmt: skip


class Error(Exception):
    msg = ""

    def __str__(self) -> str:
        return self.msg.format(self=self)


class ConnectionError(Error):  # noqa: A001 (VDSM's name)
    msg = "Connection to {self.host}:{self.port} with use_tls={self.use_tls}, timeout={self.timeout} failed: {self.reason}"

    def __init__(self, host: str, port: int, use_tls: bool, timeout: float, reason: object) -> None:
        self.host, self.port, self.use_tls, self.timeout, self.reason = host, port, use_tls, timeout, reason


class MissingSchemaError(Error):
    msg = "Error parsing schema: {self.reason}"

    def __init__(self, reason: object) -> None:
        self.reason = reason


class TimeoutError(Error):  # noqa: A001 (VDSM's name)
    msg = "Request {self.cmd} with args {self.params} timed out after {self.timeout} seconds"

    def __init__(self, cmd: str, params: dict[str, Any], timeout: float) -> None:
        self.cmd, self.params, self.timeout = cmd, params, timeout


class ClientError(Error):
    msg = "Request {self.cmd} with args {self.params} failed: {self.reason}"

    def __init__(self, cmd: str, params: dict[str, Any], reason: object) -> None:
        self.cmd, self.params, self.reason = cmd, params, reason


class ServerError(Error):
    msg = "Command {self.cmd} with args {self.params} failed:\n(code={self.code}, message={self.resp_msg})"

    def __init__(self, cmd: str, params: dict[str, Any], code: int, message: str) -> None:
        self.cmd, self.params, self.code, self.resp_msg = cmd, params, code, message


def connect(
    host: str = "localhost",
    port: int = DEFAULT_PORT,
    use_tls: bool = True,
    timeout: float = 60,
    gluster_enabled: bool = False,
    incoming_heartbeat: int = 0,
    outgoing_heartbeat: int = 0,
    nr_retries: int = 1,
) -> _Client:
    """A client of the local agent. Only this host's agent is reachable
    (through its Unix socket, so `port` and `use_tls` do not apply)."""
    import os

    socket_path = agent_setting("VMHOOKS_SOCKET", DEFAULT_SOCKET)
    if host not in LOCAL_HOSTS:
        raise ConnectionError(host, port, use_tls, timeout, "vmhooks serves hooks on this host's agent only")
    if not os.path.exists(socket_path):
        raise ConnectionError(host, port, use_tls, timeout, f"no vmhooks agent socket at {socket_path}")
    return _Client(socket_path, timeout)


class Namespace:
    def __init__(self, name: str, call: Any) -> None:
        self._name = name
        self._call = call

    def __getattr__(self, method_name: str) -> Any:
        if method_name.startswith("_"):
            raise AttributeError(method_name)
        def call(**kwargs: Any) -> Any:
            return self._call(self._name, method_name, **kwargs)

        return call


class _Client:
    def __init__(self, socket_path: str, default_timeout: float) -> None:
        self._socket_path = socket_path
        self._default_timeout = default_timeout
        self._flow_id: str | None = None
        self._next_id = 1

    def __getattr__(self, namespace: str) -> Namespace:
        if namespace.startswith("_") or not namespace[:1].isupper():
            raise AttributeError(namespace)
        return Namespace(namespace, self._call)

    def _call(self, namespace: str, method_name: str, **kwargs: Any) -> Any:
        method = f"{namespace}.{method_name}"
        timeout = kwargs.pop("_timeout", self._default_timeout)
        params = {RENAMED_PARAMS.get(name, name): value for name, value in kwargs.items()}
        if method == "Host.getVMList":
            return self._vm_list(kwargs, timeout)
        return self._request(method, params, kwargs, timeout)

    def _vm_list(self, kwargs: dict[str, Any], timeout: float) -> list[Any]:
        vms = self._request("VM.list", {}, kwargs, timeout)
        wanted = set(kwargs.get("vmList") or ())
        vms = [vm for vm in vms if not wanted or vm["vmId"] in wanted]
        if kwargs.get("onlyUUID"):
            return [vm["vmId"] for vm in vms]
        return [{"vmId": vm["vmId"], "status": VDSM_STATUS.get(vm["status"], "Down")} for vm in vms]

    def _request(self, method: str, params: dict[str, Any], shown: dict[str, Any], timeout: float) -> Any:
        import http.client
        import json
        import socket

        request_id, self._next_id = self._next_id, self._next_id + 1
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        connection = http.client.HTTPConnection("localhost", timeout=timeout)
        connection.sock = sock
        try:
            sock.connect(self._socket_path)
            connection.request("POST", "/rpc", body.encode("utf-8"), _headers())
            data = connection.getresponse().read()
        except socket.timeout:
            raise TimeoutError(method, shown, timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(method, shown, exc) from None
        finally:
            connection.close()
        try:
            reply = json.loads(data)
        except ValueError:
            raise ClientError(method, shown, "the agent's reply is not JSON") from None
        error = reply.get("error")
        if error:
            raise ServerError(method, shown, error.get("code", 0), error.get("message", ""))
        return reply.get("result")

    def close(self) -> None:
        """Nothing stays open between calls."""

    def flow(self, flow_id: str) -> _Flow:
        """`with cli.flow(id):` names the calls inside (VDSM logs it; kept for its callers)."""
        return _Flow(self, flow_id)


def _headers() -> dict[str, str]:
    """A hook shows the token of the chain that runs it, so that acting on
    that chain's VM does not wait for the operation (which waits for the
    hook). The names are vmhooks.environment's LOCK_TOKEN_VARIABLE and
    LOCK_TOKEN_HEADER, spelt out: this package imports no vmhooks module."""
    headers = {"Content-Type": "application/json"}
    token = agent_setting("VMHOOKS_LOCK_TOKEN", "")
    if token:
        headers["X-Vmhooks-Lock-Token"] = token
    return headers


class _Flow:
    def __init__(self, client: _Client, flow_id: str) -> None:
        self._client, self._flow_id = client, flow_id

    def __enter__(self) -> None:
        self._client._flow_id = self._flow_id

    def __exit__(self, *_exc: object) -> None:
        self._client._flow_id = None
