"""A timed-out hook leaves nothing running, whatever its descendants did to
leave its process group (issue 8, item 10): with a cgroup per hook, and
with the subreaper where no cgroup can be had."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import process_dead

from vmhooks import containment
from vmhooks.runner import RunnerConfig, Status, run_chain

MakeHook = Callable[..., Path]

# One descendant leaves the session at once (its parent, the hook, still
# lives); one through a double fork (its parent is gone before the timeout).
ESCAPING_HOOK = """
    setsid sh -c 'echo $$ > {marks}/detached; exec sleep 300' &
    (setsid sh -c 'echo $$ > {marks}/orphaned; exec sleep 300' &)
    while [ ! -s {marks}/detached ] || [ ! -s {marks}/orphaned ]; do sleep 0.01; done
    sleep 300
"""


def escapees(marks: Path) -> list[int]:
    return [int((marks / name).read_text()) for name in ("detached", "orphaned")]


def cgroup_possible() -> bool:
    own = containment.own_cgroup_dir()
    return own is not None and os.access(own, os.W_OK)


def test_cgroup_is_used_where_one_can_be_made() -> None:
    if not cgroup_possible():
        pytest.skip("no cgroup v2 directory this process may create cgroups in")
    report = containment.report()
    assert report.mechanism == "cgroup", report.detail
    assert f"/vmhooks-{os.getpid()}" in report.detail


def test_a_timeout_kills_what_left_the_session(make_hook: MakeHook, hooks_dir: Path, marks: Path) -> None:
    make_hook("before_vm_start", "10_escape", ESCAPING_HOOK.format(marks=marks))
    result = run_chain("before_vm_start", "<domain/>", RunnerConfig(hooks_dir, timeout=2, kill_grace=0.2))
    assert result.scripts[0].status is Status.TIMEOUT
    pids = escapees(marks)
    assert [process_dead(pid) for pid in pids] == [True, True], containment.report()


def hook_cgroup(result_stderr: str) -> str:
    return next(line for line in result_stderr.splitlines() if line.startswith("0::"))


def test_a_cell_is_not_shared_with_background_children_or_after_a_kill(
    make_hook: MakeHook, hooks_dir: Path, marks: Path
) -> None:
    if containment.report().mechanism != "cgroup":
        pytest.skip("cells are cgroups: this process has none")
    point = hooks_dir / "before_vm_start"
    config = RunnerConfig(hooks_dir, timeout=5, kill_grace=0.2)
    make_hook("before_vm_start", "10_x", f"""
        grep 0:: /proc/self/cgroup >&2
        sleep 0.6 >/dev/null 2>&1 &
        echo $! > {marks}/background
    """)
    first = hook_cgroup(run_chain("before_vm_start", "<domain/>", config).scripts[0].stderr)
    (point / "10_x").write_text("#!/bin/sh\ngrep 0:: /proc/self/cgroup >&2\nsleep 300\n")
    killed = run_chain("before_vm_start", "<domain/>", config, timeout=0.3).scripts[0]
    assert killed.status is Status.TIMEOUT
    second = hook_cgroup(killed.stderr)
    assert second != first  # the first still holds its background child
    (point / "10_x").write_text("#!/bin/sh\ngrep 0:: /proc/self/cgroup >&2\n")
    after = run_chain("before_vm_start", "<domain/>", config).scripts[0]
    # Never again the killed cell: Linux would kill a process cloned into it at birth.
    assert (after.status, after.rc) == (Status.OK, 0)
    assert hook_cgroup(after.stderr) != second


ZOMBIES = """
def zombies():
    me, found = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[:2] == ["Z", me]:
            found.append(pid)
    return found
"""
SUBREAPER_RUN = ZOMBIES + """
import json, os, subprocess, sys, threading, time
from pathlib import Path
from vmhooks import containment
from vmhooks.runner import RunnerConfig, run_chain
containment.use("subreaper")
report = {"mechanism": containment.report().mechanism}
# Someone else's child that exits at once, while a chain runs; its owner waits for it 0.8 s later.
other = subprocess.Popen(["sh", "-c", "exit 7"])
waiter = threading.Timer(0.8, lambda: report.__setitem__("other_rc", other.wait()))
waiter.start()
result = run_chain("before_vm_start", "<domain/>", RunnerConfig(Path(sys.argv[1]), timeout=2, kill_grace=0.2))
report["status"] = str(result.scripts[0].status)
waiter.join()
# Orphans handed to us and dead: reaped within two reaper rounds.
os.unlink(Path(sys.argv[1]) / "before_vm_start" / "10_escape")
time.sleep(2.5)
report["zombies"] = zombies()
print(json.dumps(report))
"""


def test_the_subreaper_kills_what_left_the_session_and_steals_no_status(
    make_hook: MakeHook, hooks_dir: Path, marks: Path
) -> None:
    make_hook("before_vm_start", "10_escape", ESCAPING_HOOK.format(marks=marks))
    # In a process of its own: the subreaper attribute stays with the process.
    done = subprocess.run([sys.executable, "-c", SUBREAPER_RUN, str(hooks_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["mechanism"] == "subreaper"
    assert report["status"] == "timeout"
    assert [process_dead(pid) for pid in escapees(marks)] == [True, True]
    assert report["other_rc"] == 7  # not reaped by the subreaper
    assert report["zombies"] == []


def test_the_subreaper_reaps_orphans_of_hooks_that_succeeded(make_hook: MakeHook, hooks_dir: Path) -> None:
    make_hook("before_vm_start", "10_bg", "(sleep 0.2 >/dev/null 2>&1 &)\n")
    code = ZOMBIES + textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        from vmhooks import containment
        from vmhooks.runner import RunnerConfig, run_chain
        containment.use("subreaper")
        result = run_chain("before_vm_start", "<domain/>", RunnerConfig(Path(sys.argv[1])))
        assert not result.failed, result.error_message()
        time.sleep(2.8)
        print(len(zombies()))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(hooks_dir)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "0"), done.stderr


def test_containment_is_logged_when_chosen(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="vmhooks.containment"):
        chosen = containment.use("auto")
    assert f"hook containment: {chosen.detail}" in caplog.text


def test_cgroup_can_be_demanded_and_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containment, "own_cgroup_dir", lambda: None)
    try:
        with pytest.raises(OSError, match="no cgroup v2 hierarchy"):
            containment.use("cgroup")
    finally:
        monkeypatch.undo()
        containment.use("auto")


def test_stale_directories_of_dead_agents_are_removed(tmp_path: Path) -> None:
    if containment.report().mechanism != "cgroup":
        pytest.skip("needs cgroups")
    own = containment.own_cgroup_dir()
    assert own is not None
    dead = 2**22 + 1  # above pid_max: no such process
    stale = Path(own, f"vmhooks-{dead}")
    (stale / "hook-1").mkdir(parents=True)
    containment.use("auto")
    assert not stale.exists()
