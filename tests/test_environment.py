"""A hook's environment: agent env < params < custom properties < vmId,
PYTHONPATH extended, and names/values that could take over a hook refused."""
from __future__ import annotations

import os
import tomllib

import pytest
from conftest import REPO

from vmhooks.environment import (
    ANY_CASE_PREFIXES, ANY_CASE_SUFFIXES, HOOKLIB_DIR, RESERVED, build_environment, is_reserved, validated,
)
from vmhooks.errors import InvalidEnvironmentError, UsageError

CATALOGUE = REPO / "src" / "vmhooks" / "catalogue"
BAD_NAMES = [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PATH",
    "IFS", "BASH_ENV", "ENV", "_hook_domxml", "_hook_json", "_hook_rundir", "vmId",
    "BASH_FUNC_x%%", "1abc", "a-b", "a b", "", "a=b", "é", "a.b",
]  # fmt: skip


def test_layering_order() -> None:
    base = {"A": "base", "B": "base", "C": "base", "D": "base"}
    env = build_environment(
        base,
        params={"B": "param", "C": "param"},
        custom={"C": "custom", "D": "custom"},
        vm_id="vm-1",
    )
    assert env["A"] == "base"
    assert env["B"] == "param"
    assert env["C"] == "custom"  # custom properties win over params
    assert env["D"] == "custom"
    assert env["vmId"] == "vm-1"


def test_base_is_not_modified() -> None:
    base = {"A": "1"}
    build_environment(base, params={"B": "2"}, custom={"C": "3"}, vm_id="v")
    assert base == {"A": "1"}


def test_no_vm_id_no_vmid_variable() -> None:
    assert "vmId" not in build_environment({}, params={"x": "1"})


def test_the_chains_own_names_never_come_from_the_agents_environment() -> None:
    """An agent (or `hooks run`) started from a hook inherits that hook's
    names: its own chains must not hand them on (a lock token above all)."""
    inherited = {"vmId": "other", "_hook_domxml": "/tmp/x", "VMHOOKS_LOCK_TOKEN": "0" * 32, "KEPT": "1"}
    env = build_environment(inherited)
    assert env.keys() - {"PYTHONPATH"} == {"KEPT"}


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "True"), (False, "False"), (3, "3"), (2.5, "2.5"), (None, ""), (b"caf\xc3\xa9", "café"),
     ("plain", "plain"), ("ünïcode ☃", "ünïcode ☃")],
)
def test_every_value_becomes_a_str(value: object, text: str) -> None:
    env = build_environment({}, params={"FROM_SNAPSHOT": value}, custom={"prop": value})
    assert env["FROM_SNAPSHOT"] == text
    assert env["prop"] == text
    assert all(isinstance(v, str) for v in env.values())


def test_vm_id_of_other_types_becomes_a_str() -> None:
    assert build_environment({}, vm_id=42)["vmId"] == "42"  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("origin", ["params", "custom"])
def test_bad_names_refused(name: str, origin: str) -> None:
    with pytest.raises(InvalidEnvironmentError) as info:
        build_environment({}, **{origin: {name: "x"}})
    assert repr(name) in str(info.value)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("name", ["FROM_SNAPSHOT", "pincpu", "userName", "_private", "x1", "A"])
def test_good_names_pass(name: str) -> None:
    assert build_environment({}, custom={name: "v"})[name] == "v"


@pytest.mark.parametrize("origin", ["params", "custom"])
def test_nul_in_value_refused(origin: str) -> None:
    with pytest.raises(InvalidEnvironmentError, match="NUL"):
        build_environment({}, **{origin: {"prop": "a\0b"}})


def test_nul_in_vm_id_refused() -> None:
    with pytest.raises(InvalidEnvironmentError, match="NUL"):
        build_environment({}, vm_id="a\0b")


def test_non_mapping_refused() -> None:
    with pytest.raises(InvalidEnvironmentError):
        build_environment({}, custom=[("a", "b")])  # type: ignore[arg-type]


def test_pythonpath_set_when_absent() -> None:
    assert build_environment({})["PYTHONPATH"] == str(HOOKLIB_DIR)


def test_pythonpath_appended_when_present() -> None:
    env = build_environment({"PYTHONPATH": "/opt/first"})
    assert env["PYTHONPATH"] == f"/opt/first{os.pathsep}{HOOKLIB_DIR}"


def test_hooklib_dir_holds_both_import_paths() -> None:
    assert (HOOKLIB_DIR / "hooking.py").is_file()
    assert (HOOKLIB_DIR / "vdsm" / "__init__.py").is_file()
    assert (HOOKLIB_DIR / "vdsm" / "hook" / "__init__.py").is_file()
    assert (HOOKLIB_DIR / "vdsm" / "hook" / "hooking.py").is_file()


@pytest.mark.parametrize("name", ["ZDOTDIR", "JAVA_TOOL_OPTIONS", "GIT_SSH_COMMAND", "BASH_XTRACEFD", "https_proxy", "LUA_INIT_5_4"])
def test_more_interpreter_variables_are_reserved(name: str) -> None:
    with pytest.raises(InvalidEnvironmentError, match="is reserved"):
        validated({name: "x"}, "custom property")


def test_values_are_bounded_so_exec_never_fails_with_e2big() -> None:
    assert validated({"a": "x" * (32 << 10)}, "custom property")["a"] == "x" * (32 << 10)
    with pytest.raises(InvalidEnvironmentError, match="'a' has a value over 32 KiB"):
        validated({"a": "é" * (20 << 10)}, "custom property")  # 40 KiB in UTF-8
    with pytest.raises(InvalidEnvironmentError, match="values take more than 256 KiB together"):
        validated({f"p{i}": "x" * (30 << 10) for i in range(10)}, "custom property")


# --- names that configure a library of the hook, not the hook (issue 8, item 3) ------

LIBRARY_NAMES = [
    # the list
    "SSLKEYLOGFILE", "OPENSSL_CONF", "OPENSSL_MODULES", "SSL_CERT_FILE", "SSL_CERT_DIR", "LIBVIRT_DEFAULT_URI",
    "LIBVIRT_LOG_OUTPUTS", "GCONV_PATH", "LOCPATH", "NLSPATH", "PERL5LIB", "PERL5OPT", "PERL5DB", "PERLLIB",
    "RUBYOPT", "RUBYLIB", "GEM_HOME", "NODE_OPTIONS", "NODE_EXTRA_CA_CERTS", "JAVA_TOOL_OPTIONS",
    "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "CLASSPATH", "LUA_PATH", "LUA_INIT", "TCLLIBPATH", "TCL_LIBRARY",
    "GIT_CONFIG_GLOBAL", "TMPDIR", "TMP", "TEMP", "XDG_CONFIG_HOME", "XDG_DATA_DIRS", "MALLOC_ARENA_MAX",
    "MALLOC_CHECK_", "GLIBC_TUNABLES", "KRB5_CONFIG", "KRB5CCNAME", "KRB5_TRACE", "CURL_HOME",
    "CURL_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "Http_Proxy", "ALL_PROXY", "ftp_proxy", "socks_proxy",
    # the rest of the class: libc, locale, resolver, services, terminals, pagers, tools
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TZDIR", "POSIXLY_CORRECT", "RES_OPTIONS", "HOSTALIASES",
    "LOCALDOMAIN", "GETCONF_DIR", "DATEMSK", "GMON_OUT_PREFIX", "DBUS_SYSTEM_BUS_ADDRESS", "NOTIFY_SOCKET",
    "LISTEN_FDS", "SYSTEMD_PAGER", "DISPLAY", "TERM", "TERMINFO", "TERMINFO_DIRS", "PAGER", "LESSOPEN",
    "EDITOR", "SSH_AUTH_SOCK", "SUDO_ASKPASS", "GNUPGHOME", "LDAPTLS_CACERT", "LDAPCONF", "SASL_PATH",
    "GNUTLS_SYSTEM_PRIORITY_FILE", "NSS_DEFAULT_DB_TYPE", "NSPR_LOG_FILE", "P11_KIT_SERVER_ADDRESS",
    "GIO_MODULE_DIR", "GTK_MODULES", "QT_PLUGIN_PATH", "GST_PLUGIN_PATH", "XTABLES_LIBDIR", "TAR_OPTIONS",
    "GZIP", "XZ_DEFAULTS", "GREP_OPTIONS", "BLOCK_SIZE", "TIME_STYLE", "npm_config_registry", "PHPRC",
    "AWKLIBPATH", "GODEBUG", "DOTNET_STARTUP_HOOKS", "LVM_SYSTEM_DIR", "DM_DEV_DIR", "QEMU_AUDIO_DRV",
    "LIBGUESTFS_HV", "VIRSH_DEFAULT_CONNECT_URI", "RSYNC_RSH", "WGETRC", "NETRC", "REQUESTS_CA_BUNDLE",
]  # fmt: skip


@pytest.mark.parametrize("name", LIBRARY_NAMES)
def test_names_that_configure_libraries_are_reserved(name: str) -> None:
    with pytest.raises(InvalidEnvironmentError, match="is reserved"):
        validated({name: "/anywhere"}, "custom property")


@pytest.mark.parametrize(
    "name", ["pincpu", "qemu_cmdline", "sap_agent", "log_console", "hugepages", "proxy", "proxyport", "lang",
             "tz", "home", "term", "ssl", "mytmp", "FROM_SNAPSHOT", "userName"],
)  # fmt: skip
def test_hook_names_that_merely_look_alike_pass(name: str) -> None:
    # Lower-case variants are read by no library (proxies excepted): hooks keep them.
    assert validated({name: "v"}, "custom property") == {name: "v"}


def test_every_catalogue_property_name_passes() -> None:
    names = {entry["name"] for manifest in CATALOGUE.glob("*/manifest.toml")
             for entry in tomllib.loads(manifest.read_text()).get("properties", [])}  # fmt: skip
    assert len(names) > 20
    assert [name for name in sorted(names) if is_reserved(name)] == []


def test_readme_names_every_reserved_name_and_prefix() -> None:
    readme = (REPO / "README.md").read_text()
    security = readme[readme.index("## Security") :]
    tokens = [token for group in RESERVED for token in (*group.names, *(f"{p}*" for p in group.prefixes))]
    tokens += [f"*{suffix}" for suffix in ANY_CASE_SUFFIXES] + [f"{prefix}*" for prefix in ANY_CASE_PREFIXES]
    missing = [token for token in tokens if f"`{token}`" not in security]
    assert missing == []
