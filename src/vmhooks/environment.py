"""Building a hook's environment from params, custom properties and vmId,
and refusing names and values that could take over the hook process."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
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
        "HOSTALIASES", "OPENSSL_CONF", "SSL_CERT_FILE",
    }
)  # fmt: skip
# VMHOOKS_*: the agent's settings for hooks (e.g. where nestedvt reads sysfs).
RESERVED_PREFIXES = ("LD_", "PYTHON", "_hook_", "BASH_FUNC_", "MALLOC_", "GLIBC_", "VMHOOKS_")

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
    return text


def validated(values: Mapping[str, object] | None, origin: str) -> dict[str, str]:
    if not values:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidEnvironmentError(f"{origin}s must be a mapping of name to value")
    checked = {}
    for name, value in values.items():
        check_name(name, origin)
        checked[name] = as_env_value(value, name, origin)
    return checked


def build_environment(
    base: Mapping[str, str],
    params: Mapping[str, object] | None = None,
    custom: Mapping[str, object] | None = None,
    vm_id: str | None = None,
) -> dict[str, str]:
    """The agent's environment, then params, then custom properties (which
    win over params), then vmId; PYTHONPATH extended with the hooking module.

    Raises InvalidEnvironmentError before anything runs."""
    # Our own names never leak in from the agent's environment (a stale vmId
    # at a host point, a _hook_domxml that is not this chain's).
    env = {name: value for name, value in base.items() if name != "vmId" and not name.startswith("_hook_")}
    env.update(validated(params, "param"))
    env.update(validated(custom, "custom property"))
    if vm_id is not None:
        env["vmId"] = as_env_value(vm_id, "vmId", "vmId")
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{existing}{os.pathsep}{HOOKLIB_DIR}" if existing else str(HOOKLIB_DIR)
    return env
