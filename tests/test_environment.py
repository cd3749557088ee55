"""A hook's environment: agent env < params < custom properties < vmId,
PYTHONPATH extended, and names/values that could take over a hook refused."""
from __future__ import annotations

import os

import pytest

from vmhooks.environment import HOOKLIB_DIR, build_environment, validated
from vmhooks.errors import InvalidEnvironmentError, UsageError

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
