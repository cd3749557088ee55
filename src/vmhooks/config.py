"""Settings: defaults, environment variables and the agent's TOML file."""
from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.errors import UsageError

UPSTREAM_HOOKS_DIR = Path("/usr/libexec/vdsm/hooks")
DEFAULT_RUN_DIR = Path("/run/vmhooks")
DEFAULT_STATE_DIR = Path("/var/lib/vmhooks")
DEFAULT_CONFIG_FILE = Path("/etc/vmhooks/vmhooks.toml")


def default_hooks_dir() -> Path:
    """`$VMHOOKS_HOOKS_DIR`, else VDSM's own hooks directory."""
    return Path(os.environ.get("VMHOOKS_HOOKS_DIR") or UPSTREAM_HOOKS_DIR)


def default_socket() -> Path:
    """Where clients look for the agent: `$VMHOOKS_SOCKET`, else the run dir's."""
    return Path(os.environ.get("VMHOOKS_SOCKET") or DEFAULT_RUN_DIR / "vmhooks.sock")


class AgentSettings(NamedTuple):
    libvirt_uri: str = "test:///default"
    hooks_dir: Path = UPSTREAM_HOOKS_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    socket: Path | None = None  # default: <run_dir>/vmhooks.sock
    socket_group: str | None = None  # also allow this group (mode 0660)
    hook_timeout: float = 60.0  # seconds per script
    hook_timeouts: Mapping[str, float] = {}  # "point" or "point/script" -> seconds
    allow_unsafe_hooks: bool = False
    fast_path: bool = True  # Python hooks forked from a warm interpreter (README "Python hooks, fast")
    fast_path_exclude: tuple[str, ...] = ()  # globs of "point/script" or paths always exec'd
    fast_path_interpreters: tuple[str, ...] = ()  # served besides the agent's own Python
    properties: str | None = None  # oVirt UserDefinedVMProperties: name=regex;...
    save_dir: Path | None = None  # hibernation images (default: <state_dir>/hibernation)
    history_days: float = 90.0  # hook runs older than this are forgotten
    history_max_mb: float = 512.0  # MiB of history kept; the oldest goes first
    # API connections: each listener's cap, the time a client has to send a
    # whole request, and how long requests in flight may finish on SIGTERM.
    max_connections: int = 128
    request_timeout: float = 30.0
    shutdown_grace: float = 10.0
    # Agent-to-agent (migration) API over TCP with mutual TLS.
    listen: str | None = None  # HOST:PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # peers must present a certificate signed by this CA
    migration_address: str | None = None  # where peers' QEMU sends migration data (default: listen host)
    migration_ports: str = "49152-49215"
    migration_libvirt_uri: str | None = None  # how peers' libvirtd reaches ours (default: libvirt_uri)
    hooks_pythonpath: tuple[Path, ...] = ()  # appended to the hooks' PYTHONPATH (site modules)
    # The read-only web console and /metrics (off unless set; PORT alone means 127.0.0.1:PORT).
    http_listen: str | None = None
    metrics_public: bool = False  # /metrics without the token

    @property
    def socket_path(self) -> Path:
        return self.socket if self.socket is not None else self.run_dir / "vmhooks.sock"


_PATHS = {"hooks_dir", "state_dir", "run_dir", "socket", "save_dir", "tls_cert", "tls_key", "tls_ca"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "libvirt_uri": str,
    "hooks_dir": str,
    "state_dir": str,
    "run_dir": str,
    "socket": str,
    "socket_group": str,
    "hook_timeout": (int, float),
    "hook_timeouts": dict,
    "allow_unsafe_hooks": bool,
    "fast_path": bool,
    "fast_path_exclude": list,
    "fast_path_interpreters": list,
    "properties": str,
    "save_dir": str,
    "history_days": (int, float),
    "history_max_mb": (int, float),
    "max_connections": int,
    "request_timeout": (int, float),
    "shutdown_grace": (int, float),
    "listen": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "migration_address": str,
    "migration_ports": str,
    "migration_libvirt_uri": str,
    "hooks_pythonpath": (list, str),
    "http_listen": str,
    "metrics_public": bool,
}


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {address!r} is not HOST:PORT")
    return host, int(port)


def port_range(text: str) -> range:
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise UsageError(f"port range {text!r} is not LOW-HIGH") from None
    if not 0 < low <= high < 65536:
        raise UsageError(f"port range {text!r} is not LOW-HIGH within 1-65535")
    return range(low, high + 1)


def load_settings_file(path: Path) -> dict[str, Any]:
    """The `[agent]` table of a TOML config file, checked, as AgentSettings fields."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    table = document.get("agent", {})
    unknown = set(document) - {"agent"}
    if unknown or not isinstance(table, dict):
        raise UsageError(f"config file {str(path)!r}: only an [agent] table is allowed")
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = key.replace("-", "_")
        expected = _TYPES.get(field)
        if expected is None:
            raise UsageError(f"config file {str(path)!r}: unknown setting {key!r}")
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise UsageError(f"config file {str(path)!r}: {key} has the wrong type")
        if field == "hooks_pythonpath":
            value = pythonpath_dirs(value, f"config file {str(path)!r}: hooks_pythonpath")
        values[field] = Path(value) if field in _PATHS else value
    for key in ("fast_path_exclude", "fast_path_interpreters"):
        if key in values:
            if not all(isinstance(item, str) and item for item in values[key]):
                raise UsageError(f"config file {str(path)!r}: {key} must be a list of strings")
            values[key] = tuple(values[key])
    for point, seconds in values.get("hook_timeouts", {}).items():
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise UsageError(f"config file {str(path)!r}: hook_timeouts.{point} must be > 0")
    return values


def pythonpath_dirs(value: str | list[Any] | tuple[Any, ...], what: str = "--hooks-pythonpath") -> tuple[Path, ...]:
    """Directories for the hooks' PYTHONPATH, from 'DIR:DIR' or a list:
    absolute, existing, and not writable by anyone the agent does not trust
    (every Python hook imports from them)."""
    from vmhooks.discovery import unsafe_reason

    entries = value.split(os.pathsep) if isinstance(value, str) else list(value)
    dirs = []
    for entry in entries:
        if not isinstance(entry, str) or not entry or os.pathsep in entry:
            raise UsageError(f"{what}: {entry!r} is not a directory path")
        directory = Path(entry).absolute()
        if not directory.is_dir():
            raise UsageError(f"{what}: {entry!r} is not a directory")
        reason = unsafe_reason(directory)
        if reason:
            raise UsageError(f"{what}: {entry!r} is unsafe, hooks would import from it: {reason}")
        dirs.append(directory)
    return tuple(dirs)
