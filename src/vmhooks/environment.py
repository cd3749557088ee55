"""Building a hook's environment from params, custom properties and vmId,
and refusing names and values that could take over the hook process."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from vmhooks.errors import InvalidEnvironmentError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ReservedNames(NamedTuple):
    """Variables that configure something other than the hook itself: a
    property of such a name would reach every program and library the hook
    runs, as root. `names` match exactly, `prefixes` by their start."""

    why: str
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()


# A hook shows this token (with vmhooks.client or vdsm.client, as the
# X-Vmhooks-Lock-Token header) to act on the VM whose operation runs it.
LOCK_TOKEN_VARIABLE = "VMHOOKS_LOCK_TOKEN"
LOCK_TOKEN_HEADER = "X-Vmhooks-Lock-Token"

# The one list of refused names (README "Security" shows it with the reasons).
RESERVED = (
    ReservedNames(
        "the hooks' own plumbing and the agent's settings for hooks",
        frozenset({"vmId"}), ("_hook_", "VMHOOKS_"),
    ),
    ReservedNames(
        "the dynamic loader and libc: preloaded code, module and message-catalogue "
        "paths, allocator and tunables, profiling output files",
        frozenset({"GCONV_PATH", "LOCPATH", "NLSPATH", "GETCONF_DIR", "GMON_OUT_PREFIX", "DATEMSK"}),
        ("LD_", "MALLOC_", "GLIBC_", "MEMUSAGE_", "SEGFAULT_", "LIBC_FATAL_"),
    ),
    ReservedNames(
        "locale and time zone: how every tool parses and prints text, numbers and dates",
        frozenset({"LANG", "LANGUAGE", "TZ", "TZDIR", "POSIXLY_CORRECT"}), ("LC_",),
    ),
    ReservedNames(
        "name resolution (glibc resolver, NSS)",
        frozenset({"HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN", "NIS_PATH"}), ("RESOLV_",),
    ),
    ReservedNames(
        "shells: search paths, startup files, field splitting, traces",
        frozenset({
            "PATH", "IFS", "ENV", "HOME", "SHELL", "CDPATH", "FPATH", "ZDOTDIR", "SHELLOPTS",
            "GLOBIGNORE", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND", "HISTFILE", "MAIL", "MAILPATH",
        }),  # fmt: skip
        ("BASH", "KSH_", "ZSH_"),
    ),
    ReservedNames(
        "temporary directories, where libraries create files",
        frozenset({"TMPDIR", "TMP", "TEMP", "TEMPDIR"}),
    ),
    ReservedNames(
        "per-user configuration and runtime directories (XDG), read instead of /etc",
        prefixes=("XDG_",),
    ),
    ReservedNames(
        "interpreters: module search paths, startup code and options "
        "(Python, Perl, Ruby, Node.js, Java, Lua, Tcl, PHP, R, Guile, gawk, .NET, Go)",
        frozenset({
            "_JAVA_OPTIONS", "CLASSPATH", "PHPRC", "AWKPATH", "AWKLIBPATH", "GODEBUG", "GOTRACEBACK",
            "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON",
            "R_ENVIRON_USER", "R_LIBS", "R_LIBS_USER", "R_LIBS_SITE", "TK_LIBRARY", "TIX_LIBRARY",
        }),  # fmt: skip
        (
            "PYTHON", "PERL", "RUBY", "GEM_", "BUNDLE_", "NODE_", "JAVA_", "JDK_",
            "LUA_", "TCL", "PHP_", "GUILE_", "DOTNET_", "COMPlus_",
        ),
    ),
    ReservedNames(
        "TLS and crypto libraries: trust stores, key logs, configuration and provider modules "
        "(OpenSSL, GnuTLS, NSS, libgcrypt, p11-kit)",
        frozenset({"REQUESTS_CA_BUNDLE", "NSPR_LOG_FILE", "NSPR_LOG_MODULES"}),
        ("SSL", "OPENSSL", "GNUTLS_", "NSS_", "LIBGCRYPT_", "P11_KIT_"),
    ),
    ReservedNames(
        "authentication and directory clients: Kerberos, SASL, LDAP, SSH, sudo, GnuPG",
        frozenset({"GNUPGHOME", "GPG_AGENT_INFO", "NETRC"}),
        ("KRB5", "SASL_", "LDAP", "SSH_", "SUDO_"),
    ),
    ReservedNames(
        "network clients: proxies (any variable ending in _proxy, in any case, as Python's "
        "urllib, curl and wget read them), curl, wget, git, rsync",
        frozenset({"WGETRC", "SYSTEM_WGETRC", "CVS_RSH"}),
        ("CURL", "GIT_", "RSYNC_"),
    ),
    ReservedNames(
        "virtualization and storage libraries and tools the hooks call "
        "(libvirt, virsh, libguestfs, QEMU, LVM, device-mapper)",
        prefixes=("LIBVIRT_", "VIRSH_", "LIBGUESTFS_", "QEMU_", "LVM_", "DM_"),
    ),
    ReservedNames(
        "system services a hook talks to: D-Bus buses, systemd notification and "
        "socket activation, X11 and Wayland displays",
        frozenset({"NOTIFY_SOCKET", "DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY"}),
        ("DBUS_", "SYSTEMD_", "LISTEN_", "WATCHDOG_"),
    ),
    ReservedNames(
        "plug-in module paths of libraries (GLib/GIO, GTK, Qt, GStreamer, iptables extensions)",
        frozenset({"XTABLES_LIBDIR", "IPTABLES_LIB_DIR", "IP6TABLES_LIB_DIR"}),
        ("GIO_", "G_", "GTK_", "GDK_", "QT_", "GST_"),
    ),
    ReservedNames(
        "terminals, pagers and editors: terminfo files, commands run to show or edit text",
        frozenset({"PAGER", "MANPAGER", "MANOPT", "EDITOR", "VISUAL", "BROWSER"}),
        ("TERM", "LESS"),
    ),
    ReservedNames(
        "default options of common tools, which change what they do or print",
        frozenset({
            "TAR_OPTIONS", "GZIP", "BZIP", "BZIP2", "XZ_OPT", "XZ_DEFAULTS", "ZSTD_CLEVEL",
            "GREP_OPTIONS", "BLOCK_SIZE", "BLOCKSIZE", "DF_BLOCK_SIZE", "DU_BLOCK_SIZE",
            "LS_BLOCK_SIZE", "TIME_STYLE", "QUOTING_STYLE", "PS_FORMAT", "PS_PERSONALITY",
        }),  # fmt: skip
    ),
)
# Read in any case: urllib takes every `<scheme>_proxy` whatever its case; npm
# reads `npm_config_*` in any case too.
ANY_CASE_SUFFIXES = ("_proxy",)
ANY_CASE_PREFIXES = ("npm_config_",)
RESERVED_NAMES = frozenset().union(*(group.names for group in RESERVED))
RESERVED_PREFIXES = tuple(prefix for group in RESERVED for prefix in group.prefixes)

# Linux refuses an exec whose single environment string exceeds 128 KiB, and
# the whole argument + environment area is bounded too: refuse early, whole.
MAX_VALUE_BYTES = 32 << 10
MAX_TOTAL_BYTES = 256 << 10

# The directory whose `hooking.py` (and `vdsm/hook/hooking.py`) hooks import.
HOOKLIB_DIR = Path(__file__).resolve().parent / "hooklib"


def is_reserved(name: str) -> bool:
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return True
    folded = name.lower()
    return folded.endswith(ANY_CASE_SUFFIXES) or folded.startswith(ANY_CASE_PREFIXES)


def check_name(name: str, origin: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidEnvironmentError(
            f"{origin} name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )
    if is_reserved(name):
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
    # at a host point, a _hook_domxml or a lock token that is not this chain's).
    env = {name: value for name, value in base.items()
           if name not in ("vmId", LOCK_TOKEN_VARIABLE) and not name.startswith("_hook_")}  # fmt: skip
    env.update(validated(params, "param"))
    env.update(validated(custom, "custom property"))
    if vm_id is not None:
        env["vmId"] = as_env_value(vm_id, "vmId", "vmId")
    env["PYTHONPATH"] = hooks_pythonpath(env.get("PYTHONPATH"), extra_pythonpath)
    return env


def hooks_pythonpath(existing: str | None, extra: Sequence[Path] = ()) -> str:
    """The hooks' PYTHONPATH: the agent's own, then hooklib/, then `extra`."""
    return os.pathsep.join([*([existing] if existing else []), str(HOOKLIB_DIR), *map(str, extra)])
