"""`vmhooks hooks run POINT`: the offline dry run, its three outputs and its
exit codes (0 ok, 1 a script or the output failed, 2 bad input)."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LinkedRoot

from vmhooks.cli import main

MakeHook = Callable[..., Path]
SEED_UUID = "3573e29e-5de9-468a-9fae-16050c6b3dcc"
VMHOOKS_BIN = Path(sys.executable).parent / "vmhooks"
ADD_WATCHDOG = "sed -i 's|</devices>|<watchdog model=\"i6300esb\"/></devices>|' \"$_hook_domxml\"\n"


@pytest.fixture
def xml_file(tmp_path: Path, seed_xml: str) -> Path:
    path = tmp_path / "domain.xml"
    path.write_text(seed_xml)
    return path



@pytest.fixture
def hooks_run(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["hooks", "run", *args, "--hooks-dir", str(hooks_dir)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# --- outputs ------------------------------------------------------------------


def test_report_of_an_edit(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    make_hook("before_vm_start", "10_watchdog", "echo adding a watchdog >&2\n" + ADD_WATCHDOG)
    make_hook("before_vm_start", "20_quiet", "exit 0\n")
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "before_vm_start:"
    row10 = next(line for line in lines if line.rstrip().endswith("10_watchdog  (changed payload)"))
    assert row10.split()[:2] == ["ok", "0"]
    assert any(line.split()[:2] == ["ok", "0"] and line.rstrip().endswith("20_quiet") for line in lines)
    assert "--- 10_watchdog: stderr" in out and "adding a watchdog" in out
    assert "--- 10_watchdog: changes" in out and '+' in out and "i6300esb" in out
    assert "OK" in lines
    assert "the changed payload is what the agent would use" in out


def test_report_with_no_scripts(hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file))
    assert (code, out.strip()) == (0, "before_vm_start: no scripts to run")


def test_output_payload_is_the_edited_xml(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path
) -> None:
    make_hook("before_vm_start", "10_watchdog", ADD_WATCHDOG)
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "payload")
    assert code == 0
    root = ET.fromstring(out)
    assert root.find("devices/watchdog").get("model") == "i6300esb"
    assert root.findtext("uuid") == SEED_UUID


def test_output_payload_unchanged_when_nothing_ran(
    hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path, seed_xml: str
) -> None:
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "payload")
    assert code == 0 and out.rstrip("\n") == seed_xml.rstrip("\n")


def test_output_json(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    make_hook("before_vm_start", "10_watchdog", "echo hi >&2\n" + ADD_WATCHDOG)
    make_hook("before_vm_start", "20_fail", "echo broken >&2\nexit 1\n")
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "json")
    assert code == 1
    report = json.loads(out)
    assert report["point"] == "before_vm_start"
    assert report["failed"] is True and report["aborts_operation"] is True
    assert report["rejected"] is None and report["edits_discarded"] is False
    first, second = report["scripts"]
    assert (first["name"], first["status"], first["rc"], first["changed"]) == ("10_watchdog", "ok", 0, True)
    assert first["stderr"] == "hi\n" and "i6300esb" in first["diff"]
    assert (second["name"], second["status"], second["rc"], second["stderr"]) == ("20_fail", "error", 1, "broken\n")
    assert isinstance(first["duration_s"], float)
    assert "i6300esb" in report["payload"]


def test_json_point_with_json_file(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"cpuCores": "4"}))
    make_hook("after_get_caps", "10_add", """
        import hooking
        caps = hooking.read_json()
        caps["hooked"] = 1
        hooking.write_json(caps)
    """, lang="python")
    code, out, _ = hooks_run("after_get_caps", "--json", str(caps), "--output", "payload")
    assert code == 0
    assert json.loads(out) == {"cpuCores": "4", "hooked": 1}


def test_json_point_defaults_to_empty_object(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], marks: Path
) -> None:
    make_hook("before_get_caps", "10_look", f'cp "$_hook_json" {marks}/seen\n')
    code, _, _ = hooks_run("before_get_caps")
    assert code == 0 and json.loads((marks / "seen").read_text()) == {}


def test_xml_from_stdin(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], seed_xml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_hook("before_vm_start", "10_watchdog", ADD_WATCHDOG)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(seed_xml.encode("utf-8"))))
    code, out, _ = hooks_run("before_vm_start", "--xml", "-", "--output", "payload")
    assert code == 0 and "i6300esb" in out


def test_vm_id_defaults_to_the_domain_uuid_and_can_be_given(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path, marks: Path
) -> None:
    make_hook("after_vm_start", "10_env", f'echo "$vmId" >> {marks}/vmid\n')
    assert hooks_run("after_vm_start", "--xml", str(xml_file))[0] == 0
    assert hooks_run("after_vm_start", "--xml", str(xml_file), "--vm-id", "other-id")[0] == 0
    assert (marks / "vmid").read_text().split() == [SEED_UUID, "other-id"]


def test_props_and_params_reach_hooks_props_win(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path, marks: Path
) -> None:
    make_hook("after_vm_start", "10_env", f'echo "$a|$b|$flag|" > {marks}/env\n')
    code, _, _ = hooks_run(
        "after_vm_start", "--xml", str(xml_file),
        "--param", "a=param", "--param", "b=param", "--prop", "b=prop", "--prop", "flag=",
    )
    assert code == 0
    assert (marks / "env").read_text().strip() == "param|prop||"


def test_failure_at_an_aborting_point(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path
) -> None:
    make_hook("before_vm_start", "10_fail", "echo no way >&2\nexit 2\n")
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file))
    assert code == 1
    assert "FAILED, the operation would be ABORTED: before_vm_start: 10_fail failed (exit 2, chain stopped): no way" in out


def test_failure_at_a_point_that_does_not_abort(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path
) -> None:
    make_hook("after_vm_start", "10_fail", "exit 1\n")
    code, out, _ = hooks_run("after_vm_start", "--xml", str(xml_file))
    assert code == 1
    assert "FAILED, the operation goes on" in out


def test_rejected_output(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    make_hook("before_vm_start", "10_rename", "sed -i 's|<name>myvm</name>|<name>x</name>|' \"$_hook_domxml\"\n")
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "json")
    report = json.loads(out)
    assert code == 1
    assert "10_rename" in report["rejected"]
    assert "<name>myvm</name>" in report["payload"]


def test_discarded_edits_noted(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    make_hook("after_vm_start", "10_edit", ADD_WATCHDOG)
    code, out, _ = hooks_run("after_vm_start", "--xml", str(xml_file))
    assert code == 0
    assert "after_vm_start's output is not used: the edits above are discarded" in out


def test_timeout_option(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path) -> None:
    make_hook("after_vm_start", "10_hang", "sleep 100\n")
    code, out, _ = hooks_run("after_vm_start", "--xml", str(xml_file), "--timeout", "0.5", "--output", "json")
    assert code == 1
    assert json.loads(out)["scripts"][0]["status"] == "timeout"


def test_unsafe_refused_unless_allowed(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path, marks: Path
) -> None:
    make_hook("after_vm_start", "10_open", f"touch {marks}/ran\n", mode=0o777)
    code, out, _ = hooks_run("after_vm_start", "--xml", str(xml_file))
    assert code == 1 and "refused" in out and not (marks / "ran").exists()
    code, _, _ = hooks_run("after_vm_start", "--xml", str(xml_file), "--allow-unsafe")
    assert code == 0 and (marks / "ran").exists()


def test_none_point_needs_no_input(make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], marks: Path) -> None:
    make_hook("before_vdsm_start", "10_x", f"touch {marks}/ran\n")
    code, out, _ = hooks_run("before_vdsm_start")
    assert code == 0 and (marks / "ran").exists() and out.splitlines()[-1] == "OK"


def test_hooks_dir_from_the_environment(
    make_hook: MakeHook, hooks_dir: Path, xml_file: Path, marks: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_hook("after_vm_start", "10_x", f"touch {marks}/ran\n")
    monkeypatch.setenv("VMHOOKS_HOOKS_DIR", str(hooks_dir))
    assert main(["hooks", "run", "after_vm_start", "--xml", str(xml_file)]) == 0
    assert (marks / "ran").exists()


# --- exit code 2: bad input, nothing runs ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["before_vm_strat", "--xml", "{xml}"], "unknown hook point 'before_vm_strat'"),
        (["BEFORE_VM_START", "--xml", "{xml}"], "did you mean 'before_vm_start'"),
        (["before_vm_start", "--xml", "{xml}", "--prop", "LD_PRELOAD=/tmp/x.so"], "'LD_PRELOAD' is reserved"),
        (["before_vm_start", "--xml", "{xml}", "--prop", "a-b=1"], "not an identifier"),
        (["before_vm_start", "--xml", "{xml}", "--param", "PATH=/tmp"], "'PATH' is reserved"),
        (["before_vm_start", "--xml", "{xml}", "--prop", "=1"], "expected NAME=VALUE"),
        (["before_vm_start", "--xml", "{xml}", "--prop", "flag"], "--prop 'flag': expected NAME=VALUE"),
        (["before_vm_start", "--xml", "{xml}", "--prop", "a=1", "--prop", "a=2"], "--prop 'a' is given twice"),
        (["before_vm_start", "--xml", "{xml}", "--param", "a=1", "--param", "a=1"], "--param 'a' is given twice"),
        (["before_vm_start", "--xml", "{missing}"], "cannot read XML file"),
        (["before_vm_start", "--xml", "{dir}"], "cannot read XML file"),
        (["before_vm_start", "--xml", "{malformed}"], "is malformed"),
        (["before_vm_start", "--xml", "{latin1}"], "is not UTF-8"),
        (["before_vm_start"], "needs a domain XML"),
        (["before_vm_start", "--json", "{json}"], "takes an XML payload"),
        (["after_get_caps", "--xml", "{xml}"], "takes a JSON payload"),
        (["after_get_caps", "--json", "{malformed}"], "is not valid JSON"),
        (["before_vm_start", "--xml", "{xml}", "--timeout", "0"], "--timeout must be a positive"),
    ],
)
def test_bad_input_exits_2_and_runs_nothing(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path,
    tmp_path: Path, marks: Path, args: list[str], message: str,
) -> None:
    for point in ("before_vm_start", "after_get_caps"):
        make_hook(point, "10_marker", f"touch {marks}/{point}\n")
    (tmp_path / "malformed").write_text("<domain><name>")
    (tmp_path / "latin1").write_bytes("<domain>é</domain>".encode("latin-1"))
    (tmp_path / "payload.json").write_text("{}")
    paths = {"xml": xml_file, "missing": tmp_path / "missing.xml", "dir": tmp_path,
             "malformed": tmp_path / "malformed", "latin1": tmp_path / "latin1", "json": tmp_path / "payload.json"}
    code, out, err = hooks_run(*[a.format(**paths) for a in args])
    assert code == 2
    assert message in err
    assert err.startswith("vmhooks: ") and len(err.strip().splitlines()) == 1  # one line, no traceback
    assert out == ""
    assert list(marks.iterdir()) == []


def test_debug_shows_the_traceback(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--debug", "hooks", "run", "no_such_point", "--hooks-dir", str(hooks_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "unknown hook point" in err


def test_property_definitions_checked(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path, marks: Path
) -> None:
    make_hook("before_vm_start", "10_marker", f"touch {marks}/ran\n")
    rules = "pincpu=^[0-9,^-]+$"
    code, _, err = hooks_run("before_vm_start", "--xml", str(xml_file), "--properties", rules, "--prop", "pincpu=all")
    assert code == 2 and "pincpu" in err and not (marks / "ran").exists()
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--properties", rules,
                             "--prop", "pincpu=0-1", "--prop", "other=1")
    assert code == 0 and (marks / "ran").exists()
    assert "warning: " in out and "'other'" in out


# --- the installed command -----------------------------------------------------------


@pytest.mark.skipif(not VMHOOKS_BIN.exists(), reason="the vmhooks console script is not installed")
def test_real_command(make_hook: MakeHook, hooks_dir: Path, xml_file: Path) -> None:
    make_hook("before_vm_start", "10_watchdog", ADD_WATCHDOG)
    done = subprocess.run(
        [str(VMHOOKS_BIN), "hooks", "run", "before_vm_start", "--hooks-dir", str(hooks_dir),
         "--xml", str(xml_file), "--output", "payload"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ET.fromstring(done.stdout).find("devices/watchdog") is not None
    bad = subprocess.run(
        [str(VMHOOKS_BIN), "hooks", "run", "before_vm_strat", "--hooks-dir", str(hooks_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("vmhooks: unknown hook point") and "Traceback" not in bad.stderr
    failing = hooks_dir / "before_vm_start" / "20_fail"
    failing.write_text("#!/bin/sh\nexit 1\n")
    os.chmod(failing, 0o755)
    failed = subprocess.run(
        [str(VMHOOKS_BIN), "hooks", "run", "before_vm_start", "--hooks-dir", str(hooks_dir), "--xml", str(xml_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert failed.returncode == 1 and "20_fail failed (exit 1)" in failed.stdout


def test_a_link_others_can_repoint_never_runs_their_script(
    linked_root: LinkedRoot, xml_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As with run_chain (test_runner): nobody re-points the link between the two scripts.
    code = main(["hooks", "run", "before_vm_start", "--xml", str(xml_file),
                 "--hooks-dir", str(linked_root.hooks_dir), "--output", "json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert not (linked_root.marks / "evil").exists()
    statuses = [script["status"] for script in report["scripts"]]
    if linked_root.holder.stat().st_mode & stat.S_ISVTX:
        assert (code, statuses) == (0, ["ok", "ok"])
    else:
        assert (code, statuses) == (1, ["refused", "refused"])
        assert str(linked_root.holder) in report["scripts"][1]["note"]


def test_json_says_how_descendants_are_contained(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path
) -> None:
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "json")
    containment = json.loads(out)["containment"]
    assert containment["mechanism"] in ("cgroup", "subreaper")
    assert containment["detail"]


def test_json_says_which_scripts_took_the_fast_path(
    make_hook: MakeHook, hooks_run: Callable[..., tuple[int, str, str]], xml_file: Path
) -> None:
    body = "import hooking\nhooking.write_domxml(hooking.read_domxml())\n"
    make_hook("before_vm_start", "10_py", body, lang="python")
    make_hook("before_vm_start", "20_sh", "exit 0\n")
    for flags, fast in (((), [True, False]), (("--no-fast-path",), [False, False])):
        code, out, _ = hooks_run("before_vm_start", "--xml", str(xml_file), "--output", "json", *flags)
        assert code == 0
        assert [script["fast_path"] for script in json.loads(out)["scripts"]] == fast
