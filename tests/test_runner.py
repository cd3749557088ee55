"""Running one point's chain with real hook processes: payload file, env,
exit codes, timeouts, stderr, guardrails, safety, cleanup."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NOBODY, LinkedRoot, process_dead

from vmhooks.environment import HOOKLIB_DIR
from vmhooks.errors import HookError, InvalidEnvironmentError, UnknownPointError
from vmhooks.execution import Cutoff
from vmhooks.properties import parse_user_defined
from vmhooks.runner import ChainResult, RunnerConfig, Status, run_chain

MakeHook = Callable[..., Path]
PATH = os.environ.get("PATH", "/usr/bin:/bin")
SEED_UUID = "3573e29e-5de9-468a-9fae-16050c6b3dcc"


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path



@pytest.fixture
def config(hooks_dir: Path, work_dir: Path) -> Callable[..., RunnerConfig]:
    def make(**overrides: Any) -> RunnerConfig:
        settings: dict[str, Any] = {"work_dir": work_dir, "timeout": 20.0, "kill_grace": 0.3}
        settings.update(overrides)
        return RunnerConfig(hooks_dir, **settings)

    return make


@pytest.fixture
def children() -> Iterator[list[int]]:
    """Pids of background processes a test's hooks leave; killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if process_dead(pid, within=0):
            continue
        try:
            with open(f"/proc/{pid}/comm") as handle:
                ours = handle.read().strip() == "sleep"
            if ours:
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def by_name(result: ChainResult) -> dict[str, Any]:
    return {run.name: run for run in result.scripts}


def marker_hook(make_hook: MakeHook, point: str, name: str, marks: Path, rc: int = 0) -> Path:
    """A hook that only proves it ran."""
    return make_hook(point, name, f"touch {marks}/{name}\nexit {rc}\n")


# --- no scripts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "payload"),
    [("before_vm_start", "<domain/>"), ("after_get_caps", {"a": [1]}), ("before_vdsm_start", None)],
)
def test_no_scripts_input_untouched_and_no_temp_file(
    config: Callable[..., RunnerConfig], work_dir: Path, point: str, payload: Any
) -> None:
    result = run_chain(point, payload, config())
    assert result.payload is payload
    assert result.scripts == ()
    assert not result.failed and not result.aborts_operation
    assert list(work_dir.iterdir()) == []


def test_non_runnable_entries_count_as_no_scripts(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], work_dir: Path, seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_plain", "exit 1\n", mode=0o644)
    make_hook("before_vm_start", ".hidden", "exit 1\n")
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.scripts == () and result.payload is seed_xml
    assert list(work_dir.iterdir()) == []


def test_unknown_point_raises(config: Callable[..., RunnerConfig]) -> None:
    with pytest.raises(UnknownPointError):
        run_chain("before_vm_strat", "<domain/>", config())


# --- the payload file -------------------------------------------------------------


def test_one_payload_file_for_the_whole_chain(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_edit", f"""
        echo "$_hook_domxml" > {marks}/path10
        sed -i 's|<vcpu placement=.static.>1</vcpu>|<vcpu placement="static">4</vcpu>|' "$_hook_domxml"
    """)
    make_hook("before_vm_start", "20_look", f"""
        echo "$_hook_domxml" > {marks}/path20
        cp "$_hook_domxml" {marks}/seen20
    """)
    result = run_chain("before_vm_start", seed_xml, config())
    assert (marks / "path10").read_text() == (marks / "path20").read_text()
    assert '<vcpu placement="static">4</vcpu>' in (marks / "seen20").read_text()
    assert '<vcpu placement="static">4</vcpu>' in result.payload
    runs = by_name(result)
    assert runs["10_edit"].changed and not runs["20_look"].changed
    assert "+" in runs["10_edit"].diff and ">4</vcpu>" in runs["10_edit"].diff


def test_payload_written_as_utf8(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, seed_xml: str
) -> None:
    text = seed_xml.replace("<name>myvm</name>", "<name>myvm</name><description>héllo ☃ 日本</description>")
    make_hook("before_vm_start", "10_copy", f"""
        cp "$_hook_domxml" {marks}/copy
        sed -i 's|héllo|hällo|' "$_hook_domxml"
    """)
    result = run_chain("before_vm_start", text, config())
    assert (marks / "copy").read_bytes() == text.encode("utf-8")
    assert "<description>hällo ☃ 日本</description>" in result.payload


def test_none_payload_is_an_empty_domxml_file(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("before_vdsm_start", "10_size", f"""
        wc -c < "$_hook_domxml" | tr -d ' ' > {marks}/size
        echo "${{_hook_json-unset}}" > {marks}/json
    """)
    result = run_chain("before_vdsm_start", None, config())
    assert result.scripts[0].status is Status.OK
    assert (marks / "size").read_text().strip() == "0"
    assert (marks / "json").read_text().strip() == "unset"
    assert result.payload is None


def test_json_payload_is_named_by_hook_json(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("after_get_caps", "10_look", f"""
        cp "$_hook_json" {marks}/copy
        echo "${{_hook_domxml-unset}}" > {marks}/domxml
    """)
    run_chain("after_get_caps", {"cpuCores": "4", "name": "ü"}, config())
    assert json.loads((marks / "copy").read_bytes().decode("utf-8")) == {"cpuCores": "4", "name": "ü"}
    assert (marks / "domxml").read_text().strip() == "unset"


def test_xml_payload_is_named_by_hook_domxml_only(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("after_vm_start", "10_look", f"""
        test -f "$_hook_domxml" && echo yes > {marks}/domxml
        echo "${{_hook_json-unset}}" > {marks}/json
    """)
    run_chain("after_vm_start", "<domain/>", config(base_env={"PATH": PATH}))
    assert (marks / "domxml").read_text().strip() == "yes"
    assert (marks / "json").read_text().strip() == "unset"


def test_private_dir_0700_and_file_0600(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path
) -> None:
    make_hook("after_vm_start", "10_modes", f"""
        stat -c %a "$(dirname "$_hook_domxml")" > {marks}/dirmode
        stat -c %a "$_hook_domxml" > {marks}/filemode
        echo "$_hook_domxml" > {marks}/path
    """)
    run_chain("after_vm_start", "<domain/>", config())
    assert (marks / "dirmode").read_text().strip() == "700"
    assert (marks / "filemode").read_text().strip() == "600"
    path = Path((marks / "path").read_text().strip())
    assert path.parent.parent == work_dir
    assert not path.exists() and not path.parent.exists()
    assert list(work_dir.iterdir()) == []


@pytest.mark.parametrize("ending", ["exit 0", "exit 1", "exit 2", "kill -9 $$", "sleep 100"])
def test_payload_dir_removed_on_every_path(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path, ending: str
) -> None:
    make_hook("before_vm_start", "10_x", f"""
        echo "$_hook_domxml" > {marks}/path
        {ending}
    """)
    run_chain("before_vm_start", "<domain/>", config(), timeout=0.5)
    assert (marks / "path").exists()
    assert list(work_dir.iterdir()) == []


def test_payload_dir_removed_when_the_runner_raises(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_x", marks)
    # An agent environment that cannot be handed to a process: spawning raises.
    broken = config(base_env={"PATH": PATH, "NOT_A_STR": 1})
    with pytest.raises(TypeError):
        run_chain("before_vm_start", "<domain/>", broken)
    assert not (marks / "10_x").exists()
    assert list(work_dir.iterdir()) == []


def test_payload_file_removed_by_a_hook_is_rejected_at_output_points(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_rm", 'rm "$_hook_domxml"\n')
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.rejected is not None and "10_rm removed the payload file" in result.rejected
    assert result.payload is seed_xml


# --- environment -----------------------------------------------------------------


def test_environment_order(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    make_hook("after_vm_start", "10_env", f"""
        echo "$A|$B|$C|$D|$vmId" > {marks}/env
    """)
    run_chain(
        "after_vm_start",
        "<domain/>",
        config(base_env={"PATH": PATH, "A": "base", "B": "base", "C": "base", "D": "base"}),
        params={"B": "param", "C": "param"},
        custom={"C": "custom"},
        vm_id="vm-42",
    )
    assert (marks / "env").read_text().strip() == "base|param|custom|base|vm-42"


def test_agent_environment_is_the_default_base(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMHOOKS_TEST_AGENT_VAR", "from-agent")
    make_hook("after_vm_start", "10_env", f'echo "$VMHOOKS_TEST_AGENT_VAR" > {marks}/env\n')
    run_chain("after_vm_start", "<domain/>", config())
    assert (marks / "env").read_text().strip() == "from-agent"


def test_pythonpath_appended(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    make_hook("after_vm_start", "10_env", f'echo "$PYTHONPATH" > {marks}/pp\n')
    run_chain("after_vm_start", "<domain/>", config(base_env={"PATH": PATH, "PYTHONPATH": "/opt/mine"}))
    assert (marks / "pp").read_text().strip() == f"/opt/mine{os.pathsep}{HOOKLIB_DIR}"


IMPORT_BOTH = """
    import os, sys
    import hooking
    from vdsm.hook import hooking as vdsm_hooking
    assert vdsm_hooking.read_domxml is hooking.read_domxml
    doc = vdsm_hooking.read_domxml()
    with open(os.path.join({marks!r}, "out"), "w") as out:
        out.write(hooking.__file__ + "\\n" + doc.documentElement.tagName + "\\n")
"""


def test_import_hooking_both_ways_in_a_python_hook(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("after_vm_start", "10_py", IMPORT_BOTH.format(marks=str(marks)), lang="python")
    result = run_chain("after_vm_start", "<domain/>", config())
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    hooking_file, tag = (marks / "out").read_text().split()
    assert Path(hooking_file).parent == HOOKLIB_DIR
    assert tag == "domain"


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no system python3")
def test_import_hooking_under_a_python_without_vmhooks(
    hooks_dir: Path, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    # The system interpreter knows nothing of vmhooks: only PYTHONPATH makes it work.
    point = hooks_dir / "after_vm_start"
    point.mkdir()
    script = point / "10_py"
    script.write_text("#!/usr/bin/python3\n" + textwrap.dedent(IMPORT_BOTH.format(marks=str(marks))))
    os.chmod(script, 0o755)
    result = run_chain("after_vm_start", "<domain/>", config(base_env={"PATH": PATH}))
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    assert (marks / "out").exists()


def test_non_str_values_never_crash(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    make_hook("after_vm_dehibernate", "10_env", f'echo "$FROM_SNAPSHOT|$count|$ratio|$flag" > {marks}/env\n')
    result = run_chain(
        "after_vm_dehibernate",
        "<domain/>",
        config(),
        params={"FROM_SNAPSHOT": True, "count": 3},
        custom={"ratio": 0.5, "flag": False},
        vm_id="v",
    )
    assert result.scripts[0].status is Status.OK
    assert (marks / "env").read_text().strip() == "True|3|0.5|False"


def test_run_dir_given_as_hook_rundir(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, tmp_path: Path
) -> None:
    make_hook("after_vm_start", "10_env", f'echo "$_hook_rundir" > {marks}/rundir\n')
    run_chain("after_vm_start", "<domain/>", config(run_dir=tmp_path / "run"))
    assert (marks / "rundir").read_text().strip() == str(tmp_path / "run")


def test_cwd_inherited_and_stdout_discarded(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    make_hook("after_vm_start", "10_cwd", f"""
        pwd > {marks}/cwd
        echo THIS-IS-STDOUT
        echo this-is-stderr >&2
    """)
    result = run_chain("after_vm_start", "<domain/>", config())
    assert (marks / "cwd").read_text().strip() == str(tmp_path)
    assert result.scripts[0].stderr == "this-is-stderr\n"


BAD_PROPERTY_NAMES = ["LD_PRELOAD", "PYTHONPATH", "PATH", "_hook_domxml", "vmId", "1abc", "a-b"]


@pytest.mark.parametrize("name", BAD_PROPERTY_NAMES)
@pytest.mark.parametrize("origin", ["custom", "params"])
def test_bad_property_names_raise_before_anything_runs(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path,
    name: str, origin: str,
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_marker", marks)
    with pytest.raises(InvalidEnvironmentError):
        run_chain("before_vm_start", "<domain/>", config(), **{origin: {name: "x"}})
    assert not (marks / "10_marker").exists()
    assert list(work_dir.iterdir()) == []


@pytest.mark.parametrize("where", ["custom", "params", "vm_id"])
def test_nul_values_raise_before_anything_runs(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, where: str
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_marker", marks)
    kwargs: dict[str, Any] = {"vm_id": "a\0b"} if where == "vm_id" else {where: {"prop": "a\0b"}}
    with pytest.raises(InvalidEnvironmentError):
        run_chain("before_vm_start", "<domain/>", config(), **kwargs)
    assert not (marks / "10_marker").exists()


# --- property rules ------------------------------------------------------------


def test_property_rule_mismatch_raises_before_any_script(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_marker", marks)
    rules = parse_user_defined("pincpu=^[0-9,^-]+$")
    with pytest.raises(InvalidEnvironmentError, match="pincpu"):
        run_chain("before_vm_start", "<domain/>", config(property_rules=rules), custom={"pincpu": "all"})
    assert not (marks / "10_marker").exists()
    assert list(work_dir.iterdir()) == []


def test_property_rule_match_runs_and_undeclared_warns(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_marker", marks)
    rules = parse_user_defined("pincpu=^[0-9,^-]+$")
    result = run_chain(
        "before_vm_start", "<domain/>", config(property_rules=rules),
        custom={"pincpu": "0-3", "mystery": "1"},
    )
    assert (marks / "10_marker").exists()
    assert len(result.warnings) == 1 and "'mystery'" in result.warnings[0]
    assert not result.failed


def test_no_rules_no_warnings(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    marker_hook(make_hook, "before_vm_start", "10_marker", marks)
    result = run_chain("before_vm_start", "<domain/>", config(), custom={"anything": "goes"})
    assert result.warnings == ()


# --- exit codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "status", "rc", "chain_goes_on"),
    [
        ("exit 0", Status.OK, 0, True),
        ("exit 1", Status.ERROR, 1, True),
        ("exit 2", Status.STOPPED_CHAIN, 2, False),
        ("exit 3", Status.ERROR, 3, True),
        ("exit 42", Status.ERROR, 42, True),
        ("exit 255", Status.ERROR, 255, True),
        ("kill -9 $$", Status.SIGNAL, -9, True),
        ("kill -TERM $$", Status.SIGNAL, -15, True),
    ],
)
def test_exit_codes(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path,
    ending: str, status: Status, rc: int, chain_goes_on: bool,
) -> None:
    make_hook("after_vm_start", "10_first", f"echo trouble >&2\n{ending}\n")
    marker_hook(make_hook, "after_vm_start", "20_second", marks)
    result = run_chain("after_vm_start", "<domain/>", config())
    first = result.scripts[0]
    assert (first.name, first.status, first.rc) == ("10_first", status, rc)
    assert (marks / "20_second").exists() == chain_goes_on
    assert len(result.scripts) == (2 if chain_goes_on else 1)
    assert result.failed == (status is not Status.OK)


@pytest.mark.parametrize("rc", [3, 127])
def test_reserved_codes_are_noted(make_hook: MakeHook, config: Callable[..., RunnerConfig], rc: int) -> None:
    make_hook("after_vm_start", "10_x", f"exit {rc}\n")
    run = run_chain("after_vm_start", "<domain/>", config()).scripts[0]
    assert "reserved" in run.note and str(rc) in run.note


def test_signal_is_named(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_x", "kill -9 $$\n")
    assert "SIGKILL" in run_chain("after_vm_start", "<domain/>", config()).scripts[0].note


def test_script_without_shebang_is_an_error_and_chain_goes_on(
    hooks_dir: Path, make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    marker_hook(make_hook, "after_vm_start", "20_second", marks)
    bad = hooks_dir / "after_vm_start" / "10_noshebang"
    bad.write_text("echo hi\n")
    os.chmod(bad, 0o755)
    result = run_chain("after_vm_start", "<domain/>", config())
    first = by_name(result)["10_noshebang"]
    assert first.status is Status.ERROR and first.rc is None
    assert "cannot execute" in first.note
    assert (marks / "20_second").exists()


def test_error_message_names_every_failing_script_with_its_own_code_and_stderr(
    make_hook: MakeHook, config: Callable[..., RunnerConfig]
) -> None:
    make_hook("before_vm_start", "10_a", "echo alpha broke >&2\nexit 1\n")
    make_hook("before_vm_start", "20_b", "echo fine-b >&2\nexit 0\n")
    make_hook("before_vm_start", "30_c", "echo gamma broke >&2\nexit 7\n")
    make_hook("before_vm_start", "40_d", "echo delta ok >&2\nexit 0\n")
    result = run_chain("before_vm_start", "<domain/>", config())
    message = result.error_message()
    assert message.startswith("before_vm_start: ")
    assert re.search(r"10_a failed \(exit 1\): alpha broke", message)
    assert re.search(r"30_c failed \(exit 7, reserved code treated as 1\): gamma broke", message)
    assert "20_b" not in message and "fine-b" not in message
    assert "40_d" not in message and "delta ok" not in message
    assert message.index("10_a") < message.index("30_c")
    with pytest.raises(HookError) as info:
        result.raise_if_aborting()
    assert str(info.value) == message
    assert info.value.result is result


def test_error_message_for_timeout_and_stop(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("before_vm_start", "10_a", "echo first >&2\nexit 1\n")
    make_hook("before_vm_start", "20_b", "echo 'cannot migrate' >&2\nexit 2\n")
    message = run_chain("before_vm_start", "<domain/>", config()).error_message()
    assert "10_a failed (exit 1): first" in message
    assert "20_b failed (exit 2, chain stopped): cannot migrate" in message


@pytest.mark.parametrize(
    ("point", "raises"),
    [
        ("before_vm_start", True),
        ("before_vm_migrate_source", True),
        ("before_nic_hotplug", True),
        ("after_disk_prepare", True),  # the one after_* point that raises
        ("after_vm_start", False),
        ("after_vm_destroy", False),
        ("before_vm_set_ticket", False),
        ("before_vdsm_start", False),
        ("after_get_caps", False),
    ],
)
def test_raise_if_aborting_only_where_the_point_aborts(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], point: str, raises: bool
) -> None:
    make_hook(point, "10_fail", "echo nope >&2\nexit 1\n")
    payload: Any = {} if point in ("after_disk_prepare", "after_get_caps") else "<domain/>"
    result = run_chain(point, payload, config())
    assert result.failed
    assert result.aborts_operation == raises
    if raises:
        with pytest.raises(HookError, match="10_fail failed"):
            result.raise_if_aborting()
    else:
        result.raise_if_aborting()


def test_success_does_not_raise(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    result = run_chain("before_vm_start", "<domain/>", config())
    assert not result.failed and not result.aborts_operation
    result.raise_if_aborting()


def test_edits_of_failed_scripts_are_kept(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_get_caps", "10_edit_fail", """
        echo '{"added": true}' > "$_hook_json"
        exit 1
    """)
    result = run_chain("after_get_caps", {}, config())
    assert result.failed and not result.aborts_operation
    assert result.payload == {"added": True}


# --- timeouts ---------------------------------------------------------------------


def test_timeout_kills_the_whole_group_and_stops_the_chain(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, children: list[int]
) -> None:
    make_hook("before_vm_start", "10_hang", f"""
        sleep 100 &
        echo $! > {marks}/child
        echo hanging >&2
        sleep 100
    """)
    marker_hook(make_hook, "before_vm_start", "20_next", marks)
    started = time.monotonic()
    result = run_chain("before_vm_start", "<domain/>", config(), timeout=0.5)
    elapsed = time.monotonic() - started
    child = int((marks / "child").read_text())
    children.append(child)
    [run] = result.scripts
    assert run.status is Status.TIMEOUT
    assert "timed out after 0.5s" in run.note
    assert run.stderr == "hanging\n"
    assert 0.4 < elapsed < 5
    assert not (marks / "20_next").exists()
    assert process_dead(child)
    assert result.aborts_operation
    with pytest.raises(HookError, match="10_hang failed \\(timed out"):
        result.raise_if_aborting()


def test_timeout_kills_a_group_that_ignores_sigterm(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, children: list[int]
) -> None:
    make_hook("after_vm_start", "10_stubborn", f"""
        trap '' TERM
        sleep 100 &
        echo $! > {marks}/child
        sleep 100
    """)
    started = time.monotonic()
    result = run_chain("after_vm_start", "<domain/>", config(kill_grace=0.3), timeout=0.5)
    children.append(int((marks / "child").read_text()))
    assert result.scripts[0].status is Status.TIMEOUT
    assert time.monotonic() - started < 5
    assert process_dead(children[0])


def test_per_point_timeout(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_hang", "sleep 100\n")
    started = time.monotonic()
    result = run_chain("after_vm_start", "<domain/>", config(timeout=30, timeouts={"after_vm_start": 0.5}))
    assert result.scripts[0].status is Status.TIMEOUT
    assert time.monotonic() - started < 5


def test_per_script_timeout_wins_over_per_point(
    make_hook: MakeHook, config: Callable[..., RunnerConfig]
) -> None:
    make_hook("after_vm_start", "10_quickish", "sleep 0.8\n")
    make_hook("after_vm_start", "20_hang", "sleep 100\n")
    timeouts = {"after_vm_start": 0.4, "after_vm_start/10_quickish": 10, "after_vm_start/20_hang": 0.3}
    result = run_chain("after_vm_start", "<domain/>", config(timeout=30, timeouts=timeouts))
    runs = by_name(result)
    assert runs["10_quickish"].status is Status.OK  # 0.8 s > the point's 0.4 s, < its own 10 s
    assert runs["20_hang"].status is Status.TIMEOUT
    assert "0.3s" in runs["20_hang"].note


def test_per_script_timeout_of_another_script_does_not_apply(
    make_hook: MakeHook, config: Callable[..., RunnerConfig]
) -> None:
    make_hook("after_vm_start", "10_slowish", "sleep 0.6\n")
    result = run_chain(
        "after_vm_start", "<domain/>", config(timeout=10, timeouts={"after_vm_start/99_other": 0.2})
    )
    assert result.scripts[0].status is Status.OK


def test_per_call_timeout_wins_over_config(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_hang", "sleep 100\n")
    cfg = config(timeout=30, timeouts={"after_vm_start/10_hang": 30})
    result = run_chain("after_vm_start", "<domain/>", cfg, timeout=0.4)
    assert result.scripts[0].status is Status.TIMEOUT


def test_deadline_bounds_the_whole_chain(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    # Each script alone is within its 30 s timeout; together they would not be.
    make_hook("before_vm_start", "10_slow", "sleep 0.6\n")
    make_hook("before_vm_start", "20_slow", "sleep 100\n")
    make_hook("before_vm_start", "30_never", f"touch {marks}/ran\n")
    started = time.monotonic()
    result = run_chain("before_vm_start", "<domain/>", config(timeout=30), deadline=started + 1.2)
    runs = by_name(result)
    assert runs["10_slow"].status is Status.OK
    assert runs["20_slow"].status is Status.TIMEOUT  # cut to the ~0.6 s left
    assert "30_never" not in runs and not (marks / "ran").exists()
    assert time.monotonic() - started < 5
    assert result.aborts_operation


def test_no_script_starts_after_the_deadline(make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path) -> None:
    make_hook("before_vm_start", "10_touch", f"touch {marks}/ran\n")
    result = run_chain("before_vm_start", "<domain/>", config(), deadline=time.monotonic() - 1)
    assert not (marks / "ran").exists()
    assert [(run.name, run.status, run.rc) for run in result.scripts] == [("10_touch", Status.TIMEOUT, None)]
    assert "deadline" in result.error_message()


def test_a_cutoff_kills_the_running_script_and_everything_it_started(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("before_vm_start", "10_slow", f"setsid sleep 100 & echo $! > {marks}/child\nexec sleep 100\n")
    make_hook("before_vm_start", "20_never", f"touch {marks}/ran\n")
    cutoff = Cutoff()
    timer = threading.Timer(0.5, cutoff.fire, ("the agent is stopping",))
    try:
        timer.start()
        result = run_chain("before_vm_start", "<domain/>", config(timeout=60, kill_grace=0.2, cutoff=cutoff))
        runs = by_name(result)
        assert runs["10_slow"].status is Status.TIMEOUT
        assert runs["10_slow"].note == "killed with every process it started: the agent is stopping"
        assert "20_never" not in runs and not (marks / "ran").exists()
        assert process_dead(int((marks / "child").read_text()))
        assert result.aborts_operation and "the agent is stopping" in result.error_message()
        later = run_chain("before_vm_start", "<domain/>", config(cutoff=cutoff))  # a chain on a fired cutoff
        assert [(r.name, r.status, r.note) for r in later.scripts] == [
            ("10_slow", Status.TIMEOUT, "not started: the agent is stopping")
        ]
    finally:
        timer.cancel()
        timer.join()
        cutoff.close()


def test_timeout_for_lookup(hooks_dir: Path) -> None:
    cfg = RunnerConfig(hooks_dir, timeout=60, timeouts={"p": 5, "p/s": 1})
    assert cfg.timeout_for("p", "s", None) == 1
    assert cfg.timeout_for("p", "other", None) == 5
    assert cfg.timeout_for("q", "s", None) == 60
    assert cfg.timeout_for("p", "s", 0.5) == 0.5


def test_background_child_holding_stderr_does_not_block(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, children: list[int]
) -> None:
    make_hook("before_vm_start", "10_daemonish", f"""
        sleep 30 &
        echo $! > {marks}/child
        echo left a child >&2
        exit 0
    """)
    marker_hook(make_hook, "before_vm_start", "20_next", marks)
    started = time.monotonic()
    result = run_chain("before_vm_start", "<domain/>", config(timeout=20))
    elapsed = time.monotonic() - started
    children.append(int((marks / "child").read_text()))
    assert elapsed < 5  # the child lives 30 s: the runner did not wait for it
    runs = by_name(result)
    assert runs["10_daemonish"].status is Status.OK
    assert runs["10_daemonish"].stderr == "left a child\n"
    assert runs["20_next"].status is Status.OK and (marks / "20_next").exists()


# --- stderr ------------------------------------------------------------------------


BIG = 50_000_000


def test_huge_stderr_is_capped(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_loud", f"""
        import sys
        sys.stderr.buffer.write(b"HEAD" + b"x" * {BIG} + b"TAIL")
    """, lang="python")
    cap = 256 << 10
    result = run_chain("after_vm_start", "<domain/>", config(stderr_cap=cap))
    run = result.scripts[0]
    assert run.status is Status.OK
    marker = f"\n[... {BIG + 8 - cap} bytes of stderr dropped ...]\n"
    assert marker in run.stderr
    assert len(run.stderr) <= cap + len(marker)
    assert run.stderr.startswith("HEAD") and run.stderr.endswith("TAIL")


def test_default_cap_is_bounded(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_loud", f"""
        import sys
        sys.stderr.buffer.write(b"y" * {BIG // 5})
    """, lang="python")
    run = run_chain("after_vm_start", "<domain/>", config()).scripts[0]
    assert len(run.stderr) < 300_000
    assert "bytes of stderr dropped" in run.stderr


def test_small_cap_exact(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_loud", """
        printf 'abcdefghij' >&2
        printf '0123456789' >&2
        printf 'KLMNOPQRST' >&2
    """)
    run = run_chain("after_vm_start", "<domain/>", config(stderr_cap=10)).scripts[0]
    assert run.stderr == "abcde\n[... 20 bytes of stderr dropped ...]\nPQRST"


def test_stderr_under_the_cap_is_kept_whole(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_x", "echo one >&2\necho two >&2\n")
    assert run_chain("after_vm_start", "<domain/>", config()).scripts[0].stderr == "one\ntwo\n"


def test_non_utf8_stderr_is_replaced(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_x", "printf 'bad \\377\\376 end caf\\303\\251\\n' >&2\n")
    run = run_chain("after_vm_start", "<domain/>", config()).scripts[0]
    assert run.stderr == "bad \ufffd\ufffd end café\n"


# --- output guardrails ------------------------------------------------------------------


BREAKERS = {
    "malformed": ("printf '<domain><name>' > \"$_hook_domxml\"\n", "malformed XML"),
    "root": ("printf '<vm/>' > \"$_hook_domxml\"\n", "root element from <domain> to <vm>"),
    "uuid": (f"sed -i 's|<uuid>{SEED_UUID}</uuid>|<uuid>0000</uuid>|' \"$_hook_domxml\"\n", "<uuid>"),
    "name": ("sed -i 's|<name>myvm</name>|<name>other</name>|' \"$_hook_domxml\"\n", "<name>"),
}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_broken_output_rejected_at_output_points(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str, kind: str
) -> None:
    body, phrase = BREAKERS[kind]
    make_hook("before_vm_start", "10_fine", "sed -i 's|<vcpu placement=.static.>1|<vcpu placement=\"static\">2|' \"$_hook_domxml\"\n")
    make_hook("before_vm_start", "50_breaker", body)
    make_hook("before_vm_start", "60_noop", "exit 0\n")  # a later script that leaves it alone
    result = run_chain("before_vm_start", seed_xml, config())
    assert all(run.status is Status.OK for run in result.scripts)
    assert result.rejected is not None
    assert "50_breaker" in result.rejected and phrase in result.rejected
    assert result.payload is seed_xml  # nothing of the broken output
    assert result.aborts_operation and result.failed
    with pytest.raises(HookError, match="50_breaker"):
        result.raise_if_aborting()


def test_later_script_repairing_clears_the_rejection(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str, marks: Path
) -> None:
    make_hook("before_vm_start", "10_break", f"""
        cp "$_hook_domxml" {marks}/saved
        printf '<domain><name>' > "$_hook_domxml"
    """)
    make_hook("before_vm_start", "20_repair", f"""
        sed 's|<vcpu placement=.static.>1|<vcpu placement="static">3|' {marks}/saved > "$_hook_domxml"
    """)
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.rejected is None
    assert not result.aborts_operation
    assert '<vcpu placement="static">3</vcpu>' in result.payload


def test_rejection_names_the_script_that_broke_it_not_a_later_editor(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_uuid", BREAKERS["uuid"][0])
    make_hook("before_vm_start", "20_unrelated", """
        sed -i 's|</devices>|<watchdog model="i6300esb"/></devices>|' "$_hook_domxml"
    """)
    result = run_chain("before_vm_start", seed_xml, config())
    assert by_name(result)["20_unrelated"].changed
    assert result.rejected is not None
    assert "10_uuid changed the domain <uuid>" in result.rejected
    assert "20_unrelated" not in result.rejected
    assert result.payload is seed_xml


def test_a_new_problem_names_the_script_that_made_it(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str
) -> None:
    make_hook("before_vm_start", "10_uuid", BREAKERS["uuid"][0])
    make_hook("before_vm_start", "20_garbage", BREAKERS["malformed"][0])
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.rejected is not None
    assert "20_garbage wrote malformed XML" in result.rejected and "10_uuid" not in result.rejected


def test_valid_edit_is_used(make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str) -> None:
    make_hook("before_vm_start", "10_edit", """
        sed -i 's|</devices>|<watchdog model="i6300esb"/></devices>|' "$_hook_domxml"
    """)
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.rejected is None and not result.failed
    assert '<watchdog model="i6300esb"/>' in result.payload
    assert result.changed and not result.edits_discarded


def test_rewrite_without_real_change_is_not_a_change(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str
) -> None:
    # minidom rewrites quotes and adds a declaration: not an edit.
    make_hook("before_vm_start", "10_rewrite", """
        import hooking
        hooking.write_domxml(hooking.read_domxml())
    """, lang="python")
    result = run_chain("before_vm_start", seed_xml, config())
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    assert not result.scripts[0].changed and result.scripts[0].diff == ""
    assert result.payload is seed_xml


def test_device_root_change_rejected(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    nic = "<interface type='bridge'><mac address='00:1a:4a:16:01:51'/></interface>"
    make_hook("before_nic_hotplug", "10_swap", "printf '<disk/>' > \"$_hook_domxml\"\n")
    result = run_chain("before_nic_hotplug", nic, config())
    assert result.rejected is not None and "10_swap" in result.rejected
    assert result.payload is nic and result.aborts_operation


def test_device_edit_used(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    nic = "<interface type='bridge'><mac address='00:1a:4a:16:01:51'/></interface>"
    make_hook("before_nic_hotplug", "10_mtu", "sed -i 's|</interface>|<mtu size=\"9000\"/></interface>|' \"$_hook_domxml\"\n")
    result = run_chain("before_nic_hotplug", nic, config())
    assert result.rejected is None and '<mtu size="9000"/>' in result.payload


def test_invalid_json_rejected(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    caps = {"cpuCores": "4"}
    make_hook("after_get_caps", "10_bad", "printf '{broken' > \"$_hook_json\"\n")
    result = run_chain("after_get_caps", caps, config())
    assert result.rejected is not None and "10_bad wrote invalid JSON" in result.rejected
    assert result.payload is caps
    assert result.aborts_operation


def test_json_edit_used(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_get_caps", "10_add", """
        import hooking
        caps = hooking.read_json()
        caps["hooked"] = "ünï"
        hooking.write_json(caps)
    """, lang="python")
    result = run_chain("after_get_caps", {"cpuCores": "4"}, config())
    assert result.payload == {"cpuCores": "4", "hooked": "ünï"}


@pytest.mark.parametrize("point", ["before_vm_migrate_destination", "before_vm_dehibernate"])
def test_destination_and_dehibernate_edits_honoured(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str, point: str
) -> None:
    make_hook(point, "10_edit", "sed -i 's|</devices>|<watchdog model=\"ib700\"/></devices>|' \"$_hook_domxml\"\n")
    result = run_chain(point, seed_xml, config())
    assert '<watchdog model="ib700"/>' in result.payload


@pytest.mark.parametrize("point", ["after_vm_start", "before_vm_migrate_source", "after_vm_destroy"])
def test_edits_at_points_whose_output_is_unused_are_discarded(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str, point: str
) -> None:
    make_hook(point, "10_edit", "printf '<garbage' > \"$_hook_domxml\"\n")
    result = run_chain(point, seed_xml, config())
    assert result.payload is seed_xml
    assert result.edits_discarded
    assert result.rejected is None and not result.failed and not result.aborts_operation
    assert result.output_text == "<garbage"  # what the chain left, for reports


def test_no_edit_nothing_discarded(make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str) -> None:
    make_hook("after_vm_start", "10_look", "cat \"$_hook_domxml\" > /dev/null\n")
    result = run_chain("after_vm_start", seed_xml, config())
    assert not result.edits_discarded and not result.changed


# --- safety --------------------------------------------------------------------------


def _unsafe(path: Path, how: str) -> None:
    if how == "owner":
        os.chown(path, 65534, -1)
    else:
        os.chmod(path, int(how, 8))


@pytest.mark.parametrize("how", ["775", "757", "777", "owner"])
def test_unsafe_scripts_refused_and_nothing_runs(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path, work_dir: Path, how: str
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_safe", marks)
    _unsafe(marker_hook(make_hook, "before_vm_start", "20_unsafe", marks), how)
    marker_hook(make_hook, "before_vm_start", "30_safe", marks)
    result = run_chain("before_vm_start", "<domain/>", config())
    assert list(marks.iterdir()) == []
    assert list(work_dir.iterdir()) == []
    [run] = result.scripts
    assert (run.name, run.status, run.rc) == ("20_unsafe", Status.REFUSED, None)
    assert run.note.startswith("refused: ")
    assert result.aborts_operation
    with pytest.raises(HookError, match="20_unsafe failed \\(refused: "):
        result.raise_if_aborting()


def test_allow_unsafe_runs_them(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_safe", marks)
    _unsafe(marker_hook(make_hook, "before_vm_start", "20_writable", marks), "757")
    _unsafe(marker_hook(make_hook, "before_vm_start", "30_foreign", marks), "owner")
    result = run_chain("before_vm_start", "<domain/>", config(allow_unsafe=True))
    assert sorted(p.name for p in marks.iterdir()) == ["10_safe", "20_writable", "30_foreign"]
    assert all(run.status is Status.OK for run in result.scripts)


def test_writable_point_directory_refused(
    make_hook: MakeHook, hooks_dir: Path, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    marker_hook(make_hook, "before_vm_start", "10_safe", marks)
    os.chmod(hooks_dir / "before_vm_start", 0o777)
    result = run_chain("before_vm_start", "<domain/>", config())
    assert result.scripts[0].status is Status.REFUSED
    assert result.scripts[0].note == (
        f"refused: directory {hooks_dir / 'before_vm_start'} is writable by group or others (mode 0777)"
    )
    assert not (marks / "10_safe").exists()


def test_symlinked_hook_runs(
    hooks_dir: Path, config: Callable[..., RunnerConfig], marks: Path, tmp_path: Path
) -> None:
    target = tmp_path / "shared-hook"
    target.write_text(f"#!/bin/sh\ntouch {marks}/ran\n")
    os.chmod(target, 0o755)
    (hooks_dir / "after_vm_start").mkdir()
    os.symlink(target, hooks_dir / "after_vm_start" / "10_link")
    result = run_chain("after_vm_start", "<domain/>", config())
    assert result.scripts[0].name == "10_link" and (marks / "ran").exists()


def test_scripts_run_in_code_point_order(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    for name in ("a", "Z", "9_b", "10_a"):
        make_hook("after_vm_start", name, f"echo {name} >> {marks}/order\n")
    result = run_chain("after_vm_start", "<domain/>", config())
    assert (marks / "order").read_text().split() == ["10_a", "9_b", "Z", "a"]
    assert [run.name for run in result.scripts] == ["10_a", "9_b", "Z", "a"]


def test_durations_recorded(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("after_vm_start", "10_sleep", "sleep 0.3\n")
    run = run_chain("after_vm_start", "<domain/>", config()).scripts[0]
    assert 0.25 < run.duration_s < 5


def test_python_hooks_run_under_the_shebang_interpreter(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    make_hook("after_vm_start", "10_py", f"""
        import sys
        open({str(marks / "exe")!r}, "w").write(sys.executable)
    """, lang="python")
    run_chain("after_vm_start", "<domain/>", config())
    assert (marks / "exe").read_text() == sys.executable


def test_payload_replaced_by_a_fifo_is_rejected_without_blocking(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], seed_xml: str
) -> None:
    make_hook("before_vm_start", "50_fifo", 'rm "$_hook_domxml"; mkfifo "$_hook_domxml"')
    result = run_chain("before_vm_start", seed_xml, config(), vm_id="x")
    assert result.rejected == "output rejected: 50_fifo replaced the payload file with something that is not a regular file"
    assert result.payload == seed_xml and result.aborts_operation


def test_a_very_long_timeout_is_not_an_error(make_hook: MakeHook, config: Callable[..., RunnerConfig]) -> None:
    make_hook("before_vm_destroy", "50_ok", "exit 0")
    result = run_chain("before_vm_destroy", None, config(), vm_id="x", timeout=1e12)
    assert [run.status for run in result.scripts] == [Status.OK]


# --- a hooks root reached through a symlink (issue 8, item 2) -------------------------


def test_a_link_others_can_repoint_never_runs_their_script(linked_root: LinkedRoot) -> None:
    # The first script re-points the link (as nobody) before the second runs.
    result = run_chain("before_vm_start", "<domain/>", RunnerConfig(linked_root.hooks_dir))
    assert not (linked_root.marks / "evil").exists()
    if linked_root.holder.stat().st_mode & stat.S_ISVTX:
        # Nobody cannot replace root's link in a sticky directory: the chain is safe and runs.
        assert [run.status for run in result.scripts] == [Status.OK, Status.OK]
        assert (linked_root.marks / "good_second").exists()
        assert os.readlink(linked_root.hooks_dir).endswith("/good")
    else:
        assert [run.status for run in result.scripts] == [Status.REFUSED, Status.REFUSED]
        assert all(f"directory {linked_root.holder} is owned by uid {NOBODY}" in run.note for run in result.scripts)
        assert not (linked_root.marks / "first").exists()


def test_a_key_log_file_cannot_be_set_through_a_property(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], marks: Path
) -> None:
    # Any hook that opens a TLS context would create the file, as root, wherever the property says.
    make_hook("before_vm_start", "10_tls", "import ssl\nssl.create_default_context()\n", lang="python")
    keylog = marks / "keys"
    with pytest.raises(InvalidEnvironmentError, match="SSLKEYLOGFILE"):
        run_chain("before_vm_start", "<domain/>", config(), custom={"SSLKEYLOGFILE": str(keylog)})
    assert not keylog.exists()


def test_a_planted_module_beside_a_python_hook_never_runs(
    make_hook: MakeHook, config: Callable[..., RunnerConfig], hooks_dir: Path, marks: Path
) -> None:
    # The hook imports `helper` from its own directory, where someone else may write it.
    make_hook("before_vm_start", "50_hook", f"import helper\nopen({str(marks / 'hook')!r}, 'w').close()\n", lang="python")
    helper = hooks_dir / "before_vm_start" / "helper.py"
    helper.write_text(f"open({str(marks / 'planted')!r}, 'w').close()\n")
    os.chmod(helper, 0o666)
    result = run_chain("before_vm_start", "<domain/>", config())
    assert list(marks.iterdir()) == []
    [run] = result.scripts
    assert run.status is Status.REFUSED and str(helper) in run.note
    os.chmod(helper, 0o644)  # the admin's own module: the hook runs and imports it
    assert not run_chain("before_vm_start", "<domain/>", config()).failed
    assert sorted(path.name for path in marks.iterdir()) == ["hook", "planted"]
