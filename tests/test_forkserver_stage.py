"""A fork server's stages (forkserver_stage): each Python hook is cloned from
a stage forked ahead of time, as a child of the agent; a stage that dies is
replaced, and stages that keep dying leave the server forking each hook.
(What the hook sees is the same as on exec: tests/test_forkserver.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import process_dead

from vmhooks import forkserver_link, forkserver_stage
from vmhooks.forkserver import FastPathSettings
from vmhooks.runner import RunnerConfig, run_chain

spawn_module = pytest.importorskip("vmhooks._spawn", reason="the C extension was not built (no C compiler)")


def test_become_hook_clones_a_child_of_our_parent_that_goes_on_in_our_memory() -> None:
    # A program standing for the agent forks a stand-in for a stage, which becomes a hook.
    program = textwrap.dedent("""
        import json, os, sys, time
        from vmhooks import _spawn
        reader, writer = os.pipe()
        stage = os.fork()
        if stage == 0:
            seen = ["set before the clone"]
            _spawn.become_hook(-1)
            seen.append(os.getpid())  # the hook: a new process, in the stage's memory
            time.sleep(0.2)
            os.write(writer, json.dumps([seen, os.getppid()]).encode())
            os._exit(7)
        os.close(writer)
        seen, parent = json.loads(os.read(reader, 1000))
        reaped = {}
        for _ in range(2):
            pid, status = os.waitpid(-1, 0)
            reaped["stage" if pid == stage else "hook"] = [pid, os.waitstatus_to_exitcode(status)]
        print(json.dumps({"seen": seen, "parent": parent, "me": os.getpid(), "stage": stage, "reaped": reaped}))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    hook = got["seen"][1]
    assert got["seen"][0] == "set before the clone" and hook not in (got["me"], got["stage"])
    assert got["parent"] == got["me"]  # CLONE_PARENT: the stage's parent's child, as an exec'd hook is the agent's
    assert got["reaped"] == {"stage": [got["stage"], 0], "hook": [hook, 7]}


def test_a_hooks_new_modules_are_found_without_touching_the_others() -> None:
    modules = {"os": 1, "__main__": 2, "mine": 3, "json": 4, "theirs.sub": 5}
    assert spawn_module.added(modules, frozenset({"os", "json", "__main__"}), "__main__") == [
        "__main__", "mine", "theirs.sub"]  # fmt: skip
    assert spawn_module.added({**modules, 7: "not a name"}, frozenset(), "__main__") is None


def _hook(hooks_dir: Path, name: str, body: str) -> None:
    directory = hooks_dir / "before_vm_start"
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    os.chmod(path, 0o755)


def _chain(hooks_dir: Path, tmp_path: Path) -> list[bool]:
    config = RunnerConfig(hooks_dir, fast_path=FastPathSettings(True), work_dir=tmp_path)
    result = run_chain("before_vm_start", "<domain/>", config)
    assert [run.status for run in result.scripts] == ["ok"] * len(result.scripts), result.error_message()
    return [run.fast_path for run in result.scripts]


def _waiting_stages() -> list[int]:
    """Our children in a fork server's session, the server aside: its stages."""
    servers = {server.proc.pid for server in forkserver_link.SERVERS._servers.values()
               if isinstance(server, forkserver_link.Server)}  # fmt: skip
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and int(fields[3]) in servers and int(name) not in servers:
            found.append(int(name))
    return found


def _zombie_children() -> list[int]:
    zombies = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(name))
    return zombies


def test_hooks_come_from_stages_that_are_reaped(hooks_dir: Path, tmp_path: Path) -> None:
    forkserver_link.SERVERS.close()
    for name in ("10_a", "20_b", "30_c"):
        _hook(hooks_dir, name, "pass\n")
    started: list[int] = []
    original = forkserver_link.StagedChild.__init__

    def noting(self: forkserver_link.StagedChild, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        started.append(self.stage)

    forkserver_link.StagedChild.__init__ = noting  # type: ignore[method-assign]
    try:
        assert _chain(hooks_dir, tmp_path) == [True] * 3
    finally:
        forkserver_link.StagedChild.__init__ = original  # type: ignore[method-assign]
    assert len(set(started)) == 3 and all(process_dead(pid) for pid in started)
    assert _zombie_children() == []  # the chain reaped its stages
    assert len(_waiting_stages()) == 1  # the next one, ready
    forkserver_link.SERVERS.close()
    assert _zombie_children() == [] and _waiting_stages() == []


def test_a_stage_that_died_is_replaced_and_stages_that_keep_dying_give_forks(hooks_dir: Path, tmp_path: Path) -> None:
    forkserver_link.SERVERS.close()
    _hook(hooks_dir, "10_a", "import os\nprint(os.getppid(), file=open(os.environ['out'], 'a'))\n")
    os.environ["out"] = str(tmp_path / "out")
    try:
        assert _chain(hooks_dir, tmp_path) == [True]
        for death in range(1, forkserver_stage.MAX_STAGE_DEATHS + 1):
            [stage] = _waiting_stages()
            os.kill(stage, signal.SIGKILL)
            os.waitpid(stage, 0)  # ours to reap: no hook of it will say so
            deadline = time.monotonic() + 10
            while death < forkserver_stage.MAX_STAGE_DEATHS and not _waiting_stages() and time.monotonic() < deadline:
                time.sleep(0.01)  # the server forks the next one
        assert _chain(hooks_dir, tmp_path) == [True]  # forked by the server itself now
        assert _waiting_stages() == []
        assert (tmp_path / "out").read_text().split() == [str(os.getpid())] * 2
    finally:
        del os.environ["out"]
        forkserver_link.SERVERS.close()


def test_the_server_shows_itself_again_once_idle(hooks_dir: Path, tmp_path: Path) -> None:
    # It sets up each next hook of a chain (its name and command line) before forking the stage for it.
    forkserver_link.SERVERS.close()
    for name in ("10_a", "20_b"):
        _hook(hooks_dir, name, "pass\n")
    assert _chain(hooks_dir, tmp_path) == [True, True]
    servers = forkserver_link.SERVERS._servers.values()
    [server] = [found for found in servers if isinstance(found, forkserver_link.Server)]
    proc = Path(f"/proc/{server.proc.pid}")
    deadline = time.monotonic() + forkserver_stage.IDLE_MS / 1000 + 5
    while b"forkserver_main.py" not in (proc / "cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"forkserver_main.py" in (proc / "cmdline").read_bytes()
    assert (proc / "comm").read_text().strip() == Path(sys.executable).name[:15]
    forkserver_link.SERVERS.close()


SAYS_ITS_NAME = "import os, sys\nsys.stderr.write(os.path.basename(sys.argv[0]) + '\\n')\n"


def test_chains_from_several_threads_share_the_server(tmp_path: Path) -> None:
    # Each request may find a stage set up for another chain's next hook: it is set up again.
    forkserver_link.SERVERS.close()
    roots = []
    for chain in range(3):
        root = tmp_path / f"hooks-{chain}"
        root.mkdir(mode=0o755)
        for hook in range(5):
            _hook(root, f"{hook:02d}_{chain}", SAYS_ITS_NAME)
        roots.append(root)
    results: dict[int, list[tuple[str, bool, str]]] = {}

    def run(chain: int) -> None:
        config = RunnerConfig(roots[chain], fast_path=FastPathSettings(True), work_dir=tmp_path)
        for _ in range(3):
            result = run_chain("before_vm_start", "<domain/>", config)
            results.setdefault(chain, []).extend((run.name, run.fast_path, run.stderr) for run in result.scripts)

    threads = [threading.Thread(target=run, args=(chain,)) for chain in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for chain in range(3):
        names = [f"{hook:02d}_{chain}" for hook in range(5)] * 3
        assert results[chain] == [(name, True, f"{name}\n") for name in names]
    assert _zombie_children() == []
    forkserver_link.SERVERS.close()
