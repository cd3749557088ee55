"""The hook authors' API (hook-points.md's `hooking` table), in-process
(`vmhooks.hooking`, top-level `hooking`) and inside real hook processes
(`import hooking`, `from vdsm.hook import hooking`)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.dom import minidom

import pytest

import hooking as toplevel_hooking
from conftest import as_nobody
from vmhooks import hooking
from vmhooks.runner import RunnerConfig, Status, run_chain

MakeHook = Callable[..., Path]
API = [
    "read_domxml", "write_domxml", "read_json", "write_json", "log", "exit_hook", "tobool",
    "execCmd", "load_vm_launch_flags_from_file", "dump_vm_launch_flags_to_file",
]  # fmt: skip


@pytest.fixture
def domxml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "payload.xml"
    monkeypatch.setenv("_hook_domxml", str(path))
    return path


@pytest.fixture
def jsonfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "payload.json"
    monkeypatch.setenv("_hook_json", str(path))
    return path


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setenv("_hook_rundir", str(path))
    return path


def test_the_whole_table_is_exported() -> None:
    assert sorted(hooking.__all__) == sorted(API)
    for name in API:
        assert callable(getattr(hooking, name))
        assert getattr(toplevel_hooking, name) is getattr(hooking, name)


# --- domxml / json ------------------------------------------------------------


def test_read_domxml_is_a_minidom_document(domxml: Path, seed_xml: str) -> None:
    domxml.write_bytes(seed_xml.encode("utf-8"))
    doc = hooking.read_domxml()
    assert isinstance(doc, minidom.Document)
    assert doc.documentElement.tagName == "domain"
    assert doc.getElementsByTagName("name")[0].firstChild.data == "myvm"


def test_read_domxml_decodes_utf8(domxml: Path) -> None:
    domxml.write_bytes("<domain><description>héllo ☃</description></domain>".encode("utf-8"))
    doc = hooking.read_domxml()
    assert doc.getElementsByTagName("description")[0].firstChild.data == "héllo ☃"


def test_write_domxml_round_trip(domxml: Path, seed_xml: str) -> None:
    domxml.write_bytes(seed_xml.encode("utf-8"))
    doc = hooking.read_domxml()
    desc = doc.createElement("description")
    desc.appendChild(doc.createTextNode("ünï ☃"))
    doc.documentElement.appendChild(desc)
    hooking.write_domxml(doc)
    raw = domxml.read_bytes()
    assert raw == doc.toxml(encoding="utf-8")
    assert raw.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    assert "ünï ☃".encode("utf-8") in raw
    again = hooking.read_domxml()
    assert again.getElementsByTagName("description")[0].firstChild.data == "ünï ☃"
    assert again.getElementsByTagName("uuid")[0].firstChild.data == "3573e29e-5de9-468a-9fae-16050c6b3dcc"


def test_json_round_trip(jsonfile: Path) -> None:
    jsonfile.write_bytes(json.dumps({"a": [1, 2], "b": "ü"}).encode("utf-8"))
    data = hooking.read_json()
    assert data == {"a": [1, 2], "b": "ü"}
    data["c"] = {"nested": True}
    hooking.write_json(data)
    assert json.loads(jsonfile.read_bytes().decode("utf-8")) == {"a": [1, 2], "b": "ü", "c": {"nested": True}}
    assert hooking.read_json() == data


def test_outside_a_hook_the_payload_functions_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("_hook_domxml", raising=False)
    monkeypatch.delenv("_hook_json", raising=False)
    with pytest.raises(RuntimeError, match="_hook_domxml"):
        hooking.read_domxml()
    with pytest.raises(RuntimeError, match="_hook_json"):
        hooking.read_json()


# --- log / exit_hook ---------------------------------------------------------------


def test_log_writes_message_and_newline_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    hooking.log("hello hook")
    captured = capsys.readouterr()
    assert captured.err == "hello hook\n"
    assert captured.out == ""


def test_exit_hook_default_code_is_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        hooking.exit_hook("cannot migrate")
    assert info.value.code == 2
    assert capsys.readouterr().err == "cannot migrate\n"


def test_exit_hook_with_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        hooking.exit_hook("soft failure", return_code=1)
    assert info.value.code == 1
    assert capsys.readouterr().err == "soft failure\n"


# --- tobool ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False), (True, True), (False, False),
        ("true", True), ("TRUE", True), ("True", True), ("tRuE", True),
        ("1", True), ("0", False), ("2", True), ("-1", True), ("00", False),
        ("false", False), ("FALSE", False), ("abc", False), ("", False), ("yes", False),
        ("1.5", False), (0, False), (1, True), (5, True),
    ],
)  # fmt: skip
def test_tobool(value: object, expected: bool) -> None:
    assert hooking.tobool(value) is expected


# --- execCmd -------------------------------------------------------------------------


def test_execcmd_returns_lists_of_byte_lines() -> None:
    rc, out, err = hooking.execCmd(["sh", "-c", "printf 'a\\nb\\n'; printf 'e1\\ne2\\n' >&2; exit 3"])
    assert rc == 3
    assert out == [b"a", b"b"]
    assert err == [b"e1", b"e2"]


def test_execcmd_raw_returns_bytes() -> None:
    rc, out, err = hooking.execCmd(["sh", "-c", "printf 'a\\nb\\n'; printf 'x' >&2"], raw=True)
    assert (rc, out, err) == (0, b"a\nb\n", b"x")


@pytest.mark.parametrize("data", [b"stdin \xc3\xa9 data\n", "stdin é data\n"])
def test_execcmd_data_is_stdin(data: bytes | str) -> None:
    rc, out, _ = hooking.execCmd(["cat"], raw=True, data=data)
    assert rc == 0 and out == "stdin é data\n".encode("utf-8")


def test_execcmd_without_data_gets_no_stdin() -> None:
    rc, out, _ = hooking.execCmd(["cat"], raw=True)
    assert (rc, out) == (0, b"")


def test_execcmd_env_and_cwd(tmp_path: Path) -> None:
    rc, out, _ = hooking.execCmd(
        ["sh", "-c", 'echo "$FOO"; pwd'], env={"FOO": "bar", "PATH": os.environ["PATH"]}, cwd=str(tmp_path)
    )
    assert rc == 0 and out == [b"bar", str(tmp_path).encode()]


def test_execcmd_arguments_are_stringified() -> None:
    rc, out, _ = hooking.execCmd(["echo", 42])
    assert (rc, out) == (0, [b"42"])


def test_execcmd_missing_command() -> None:
    rc, out, err = hooking.execCmd(["/nonexistent/command"])
    assert rc != 0 and out == [] and err and b"/nonexistent/command" in err[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the no-sudo-as-root rule needs root")
def test_execcmd_sudo_not_prefixed_when_root() -> None:
    # Had sudo been put in front, the command's parent would be sudo (or, with
    # no sudo installed, it would not have run at all).
    rc, out, _ = hooking.execCmd(["sh", "-c", "cat /proc/$PPID/comm; id -u"], sudo=True)
    assert rc == 0
    assert out[0] != b"sudo"
    assert out[1] == b"0"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_execcmd_sudo_prefixed_when_not_root(tmp_path: Path) -> None:
    def run() -> list[Any]:
        rc, out, err = hooking.execCmd(["sh", "-c", "cat /proc/$PPID/comm"], sudo=True, raw=True)
        return [rc, out.decode(), err.decode()]

    rc, out, err = as_nobody(run)
    # Either sudo ran the command (its parent is sudo), or sudo refused or is
    # missing: in every case it was sudo that was asked to run it.
    assert out.strip() == "sudo" or (rc != 0 and "sudo" in err)


# --- launch flags ----------------------------------------------------------------------


def test_launch_flags_default_to_zero(rundir: Path) -> None:
    assert hooking.load_vm_launch_flags_from_file("vm-1") == 0


def test_launch_flags_round_trip(rundir: Path) -> None:
    hooking.dump_vm_launch_flags_to_file("vm-1", 4)
    assert hooking.load_vm_launch_flags_from_file("vm-1") == 4
    assert (rundir / "launch-flags" / "vm-1").read_text().strip() == "4"
    hooking.dump_vm_launch_flags_to_file("vm-1", 1 | 4)
    assert hooking.load_vm_launch_flags_from_file("vm-1") == 5
    assert hooking.load_vm_launch_flags_from_file("vm-2") == 0  # per VM
    leftovers = [p.name for p in (rundir / "launch-flags").iterdir()]
    assert leftovers == ["vm-1"]  # no temp files left behind


@pytest.mark.parametrize("vm_id", ["", "../escape", "a/b", ".hidden", "a\0b"])
def test_launch_flags_refuse_bad_vm_ids(rundir: Path, vm_id: str) -> None:
    with pytest.raises(ValueError):
        hooking.load_vm_launch_flags_from_file(vm_id)
    with pytest.raises(ValueError):
        hooking.dump_vm_launch_flags_to_file(vm_id, 1)
    assert not (rundir / "escape").exists()


# --- inside real hook processes ------------------------------------------------------------


@pytest.fixture
def run(hooks_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    work = tmp_path / "work"
    work.mkdir()

    def run_point(point: str, payload: Any, **kwargs: Any) -> Any:
        config = RunnerConfig(hooks_dir, work_dir=work, run_dir=tmp_path / "run", timeout=20)
        return run_chain(point, payload, config, **kwargs)

    return run_point


def test_domxml_edit_in_a_hook_with_both_import_styles(
    make_hook: MakeHook, run: Callable[..., Any], seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_edit", """
        import hooking
        from vdsm.hook import hooking as vdsm_hooking
        doc = hooking.read_domxml()
        desc = doc.createElement("description")
        desc.appendChild(doc.createTextNode("set by a hook ☃"))
        doc.documentElement.appendChild(desc)
        vdsm_hooking.write_domxml(doc)
    """, lang="python")
    result = run("before_vm_start", seed_xml)
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    assert result.rejected is None
    doc = minidom.parseString(result.payload.encode("utf-8"))
    assert doc.getElementsByTagName("description")[0].firstChild.data == "set by a hook ☃"


def test_json_edit_in_a_hook(make_hook: MakeHook, run: Callable[..., Any]) -> None:
    make_hook("after_get_vm_stats", "10_edit", """
        from vdsm.hook import hooking
        stats = hooking.read_json()
        stats[0]["hooked"] = True
        hooking.write_json(stats)
    """, lang="python")
    result = run("after_get_vm_stats", [{"vmId": "v"}], vm_id="v")
    assert result.payload == [{"vmId": "v", "hooked": True}]


def test_tobool_of_a_property_in_a_hook(make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_hook("after_vm_dehibernate", "10_tobool", f"""
        import os, hooking
        flags = [hooking.tobool(os.environ.get(n)) for n in ("FROM_SNAPSHOT", "upper", "zero", "missing")]
        open({str(out)!r}, "w").write(repr(flags))
    """, lang="python")
    result = run("after_vm_dehibernate", "<domain/>", params={"FROM_SNAPSHOT": True},
                 custom={"upper": "TRUE", "zero": "0"}, vm_id="v")
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    assert out.read_text() == "[True, True, False, False]"


def test_log_and_exit_hook_in_a_hook(make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path) -> None:
    make_hook("before_vm_migrate_source", "10_cantmigrate", """
        import hooking
        hooking.log("checking")
        hooking.exit_hook("VM cannot be migrated")
    """, lang="python")
    make_hook("before_vm_migrate_source", "20_never", f"touch {tmp_path}/never\n")
    result = run("before_vm_migrate_source", "<domain/>")
    [first] = result.scripts
    assert (first.status, first.rc) == (Status.STOPPED_CHAIN, 2)
    assert first.stderr == "checking\nVM cannot be migrated\n"
    assert not (tmp_path / "never").exists()
    assert "10_cantmigrate failed (exit 2, chain stopped): checking | VM cannot be migrated" in result.error_message()


def test_exit_hook_with_code_1_in_a_hook(make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path) -> None:
    make_hook("after_vm_start", "10_soft", "import hooking\nhooking.exit_hook('soft', return_code=1)\n", lang="python")
    make_hook("after_vm_start", "20_next", f"touch {tmp_path}/next\n")
    result = run("after_vm_start", "<domain/>")
    assert (result.scripts[0].status, result.scripts[0].rc) == (Status.ERROR, 1)
    assert (tmp_path / "next").exists()


def test_execcmd_in_a_hook(make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_hook("after_vm_start", "10_exec", f"""
        import hooking
        rc, lines, err = hooking.execCmd(["sh", "-c", "echo one; echo two"], sudo=True)
        rc2, raw, _ = hooking.execCmd(["cat"], raw=True, data=b"piped")
        open({str(out)!r}, "w").write(repr((rc, lines, err, rc2, raw)))
    """, lang="python")
    result = run("after_vm_start", "<domain/>")
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    if os.geteuid() == 0:
        assert out.read_text() == repr((0, [b"one", b"two"], [], 0, b"piped"))
    else:
        assert out.exists()


def test_launch_flags_in_a_hook_round_trip_via_run_dir(
    make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path, seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_flags", """
        import os, sys, hooking
        vm = os.environ["vmId"]
        before = hooking.load_vm_launch_flags_from_file(vm)
        hooking.dump_vm_launch_flags_to_file(vm, before | 4)
        hooking.log(f"flags {before} -> {hooking.load_vm_launch_flags_from_file(vm)}")
    """, lang="python")
    vm = "3573e29e-5de9-468a-9fae-16050c6b3dcc"
    flags_file = tmp_path / "run" / "launch-flags" / vm
    first = run("before_vm_start", seed_xml, vm_id=vm)
    assert first.scripts[0].stderr == "flags 0 -> 4\n", first.scripts[0].stderr
    assert flags_file.read_text().strip() == "4"
    flags_file.write_text("1\n")  # the agent set its own flag meanwhile
    second = run("before_vm_start", seed_xml, vm_id=vm)
    assert second.scripts[0].stderr == "flags 1 -> 5\n"
    assert flags_file.read_text().strip() == "5"


def test_reading_the_wrong_payload_kind_fails_clearly(
    make_hook: MakeHook, run: Callable[..., Any], tmp_path: Path
) -> None:
    # At a JSON point there is no _hook_domxml: the hook is told so.
    make_hook("after_get_caps", "10_wrong_kind", "import hooking\nhooking.read_domxml()\n", lang="python")
    result = run("after_get_caps", {})
    assert result.scripts[0].status is Status.ERROR
    assert "_hook_domxml is not set" in result.scripts[0].stderr

