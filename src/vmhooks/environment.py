"""Building a hook's environment from params, custom properties and vmId,
and refusing names and values that could take over the hook process."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmhooks.errors import InvalidEnvironmentError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Variables read by the dynamic loader, interpreters and shells, or by the
# hooks' own plumbing: a property of that name would reach every hook.
RESERVED_NAMES = frozenset(
    {
        "PATH", "IFS", "ENV", "BASH_ENV", "HOME", "SHELL", "vmId",
        "CDPATH", "PS4", "SHELLOPTS", "BASHOPTS", "GLOBIGNORE", "TMPDIR",
        "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT",
        "NODE_OPTIONS", "NODE_PATH", "GCONV_PATH", "LOCPATH", "NLSPATH",
        "HOSTALIASES", "OPENSSL_CONF", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "ZDOTDIR", "LUA_INIT", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "GEM_PATH", "GEM_HOME",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CURL_HOME", "XDG_CONFIG_HOME",
        "RES_OPTIONS", "LOCALDOMAIN", "http_proxy", "https_proxy", "HTTP_PROXY",
        "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "no_proxy", "NO_PROXY",
    }
)  # fmt: skip
# VMHOOKS_*: the agent's settings for hooks (e.g. where nestedvt reads sysfs).
RESERVED_PREFIXES = (
    "LD_", "PYTHON", "_hook_", "BASH", "MALLOC_", "GLIBC_", "VMHOOKS_", "GIT_", "LUA_",
)  # fmt: skip
# Linux refuses an exec whose single environment string exceeds 128 KiB, and
# the whole argument + environment area is bounded too: refuse early, whole.
MAX_VALUE_BYTES = 32 << 10
MAX_TOTAL_BYTES = 256 << 10

# The directory whose `hooking.py` (and `vdsm/hook/hooking.py`) hooks import.
HOOKLIB_DIR = Path(__file__).resolve().parent / "hooklib"


def check_name(name: str, origin: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidEnvironmentError(
            f"{origin} name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        raise InvalidEnvironmentError(
            f"{origin} name {name!r} is reserved: it would change how hooks or "
            f"their interpreters run"
        )


def as_env_value(value: object, name: str, origin: str) -> str:
    """Every value becomes a str (bool -> "True"/"False", None -> "")."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if "\0" in text:
        raise InvalidEnvironmentError(f"{origin} {name!r} has a NUL byte in its value")
    if len(text) > MAX_VALUE_BYTES // 4 and len(text.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
        raise InvalidEnvironmentError(f"{origin} {name!r} has a value over {MAX_VALUE_BYTES >> 10} KiB")
    return text


def validated(values: Mapping[str, object] | None, origin: str) -> dict[str, str]:
    if not values:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidEnvironmentError(f"{origin} values must come as a mapping of name to value")
    checked = {}
    total = 0
    for name, value in values.items():
        check_name(name, origin)
        checked[name] = text = as_env_value(value, name, origin)
        total += len(name) + len(text) + 2
    if total > MAX_TOTAL_BYTES // 4 and sum(len(f"{n}={v}".encode()) + 1 for n, v in checked.items()) > MAX_TOTAL_BYTES:
        raise InvalidEnvironmentError(f"{origin} values take more than {MAX_TOTAL_BYTES >> 10} KiB together")
    return checked


def build_environment(
    base: Mapping[str, str],
    params: Mapping[str, object] | None = None,
    custom: Mapping[str, object] | None = None,
    vm_id: str | None = None,
    extra_pythonpath: Sequence[Path] = (),
) -> dict[str, str]:
    """The agent's environment, then params, then custom properties (which
    win over params), then vmId; PYTHONPATH extended with the hooking module
    (and the `vdsm` package beside it), then with `extra_pythonpath`.

    Raises InvalidEnvironmentError before anything runs."""
    # Our own names never leak in from the agent's environment (a stale vmId
    # at a host point, a _hook_domxml that is not this chain's).
    env = {name: value for name, value in base.items() if name != "vmId" and not name.startswith("_hook_")}
    env.update(validated(params, "param"))
    env.update(validated(custom, "custom property"))
    if vm_id is not None:
        env["vmId"] = as_env_value(vm_id, "vmId", "vmId")
    env["PYTHONPATH"] = hooks_pythonpath(env.get("PYTHONPATH"), extra_pythonpath)
    return env


def hooks_pythonpath(existing: str | None, extra: Sequence[Path] = ()) -> str:
    """The hooks' PYTHONPATH: the agent's own, then hooklib/, then `extra`."""
    return os.pathsep.join([*([existing] if existing else []), str(HOOKLIB_DIR), *map(str, extra)])
