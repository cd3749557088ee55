"""Spawning one script: `vmhooks._spawn` (clone3 straight into a cgroup)
gives a script exactly what `subprocess` gives it, and fails the same way."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmhooks import containment
from vmhooks.execution import CappedBuffer, ClonedChild, Limits, PopenChild, execute

spawn_module = pytest.importorskip("vmhooks._spawn", reason="the C extension was not built (no C compiler)")

# What a process can see of how it was started, on stderr.
PROBE = """#!/bin/sh
# Shell builtins first: nothing forked yet that could change what we read.
for fd in /proc/$$/fd/*; do printf '%s ' "${fd##*/}"; done >&2; echo >&2
while read -r line; do case $line in Sig*|NoNewPrivs*|Umask*) echo "$line" >&2;; esac; done < /proc/$$/status
ps -o sid=,pgid= -p $$ | awk -v me=$$ '{print ($1==me) ($2==me)}' >&2
pwd >&2; env | sort >&2
readlink /proc/$$/fd/0 /proc/$$/fd/1 | sed 's/[0-9]*]$/N]/' >&2
"""


@pytest.fixture
def probe(tmp_path: Path) -> str:
    path = tmp_path / "probe"
    path.write_text(PROBE)
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture
def cell() -> Iterator[containment.Cell]:
    mechanism = containment.current()
    if mechanism.name != "cgroup":
        pytest.skip("no cgroup here: _spawn is not used")
    cell = mechanism.new_cell()
    yield cell
    cell.release()


def run_both(path: str, cell: containment.Cell, env: dict[str, str]) -> tuple[str, str]:
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    outputs = []
    try:
        for way in ("popen", "clone3"):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            if way == "popen":
                child = PopenChild(subprocess.Popen([path], stdout=devnull, stderr=write_end, env=env, start_new_session=True))
            else:
                envp = [f"{k}={v}".encode() for k, v in env.items()]
                child = ClonedChild(*spawn_module.spawn(path.encode(), [path.encode()], envp, -1, devnull, write_end, cell.cgroup_fd))
            os.close(write_end)
            with os.fdopen(read_end, "rb") as stream:
                outputs.append(stream.read().decode())
            assert child.reap() == 0
            child.close()
    finally:
        os.close(devnull)
    return outputs[0], outputs[1]


def test_a_script_sees_the_same_either_way(probe: str, cell: containment.Cell) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "A": "1", "ünï": "cödé"}
    popen, clone3 = run_both(probe, cell, env)
    assert clone3 == popen
    assert "11" in popen.splitlines()  # its own session and group


def test_the_same_from_a_thread_with_signals_blocked_and_handled(probe: str, cell: containment.Cell) -> None:
    # Python's handlers must not leak into the hook; the calling thread's mask
    # does, as with subprocess.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    results: list[tuple[str, str]] = []

    def in_thread() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        results.append(run_both(probe, cell, env))

    try:
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    popen, clone3 = results[0]
    assert clone3 == popen
    assert f"SigBlk:\t{1 << (signal.SIGUSR1 - 1):016x}" in popen


@pytest.mark.parametrize(
    ("body", "mode", "code"),
    [(None, 0o755, errno.ENOENT), ("echo no shebang\n", 0o755, errno.ENOEXEC), ("#!/bin/sh\n", 0o644, errno.EACCES),
     ("#!/no/such/interpreter\n", 0o755, errno.ENOENT)],
)  # fmt: skip
def test_a_script_that_cannot_start_fails_the_same_way(
    tmp_path: Path, cell: containment.Cell, body: str | None, mode: int, code: int
) -> None:
    path = tmp_path / "script"
    if body is not None:
        path.write_text(body)
        os.chmod(path, mode)
    with pytest.raises(OSError) as popen_error:
        subprocess.Popen([str(path)], start_new_session=True)
    with pytest.raises(OSError) as clone3_error:
        spawn_module.spawn(str(path).encode(), [str(path).encode()], [], -1, 1, 2, cell.cgroup_fd)
    assert clone3_error.value.errno == popen_error.value.errno == code
    try:
        assert os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None  # no zombie left
    except ChildProcessError:
        pass  # no child at all


def test_bad_arguments_are_refused_before_anything_starts(cell: containment.Cell) -> None:
    with pytest.raises(ValueError, match="NUL"):
        spawn_module.spawn(b"/bin/true", [b"/bin/true"], [b"A=1\0B=2"], -1, 1, 2, cell.cgroup_fd)
    with pytest.raises(TypeError):
        spawn_module.spawn(b"/bin/true", [b"/bin/true"], ["A=1"], -1, 1, 2, cell.cgroup_fd)


def test_the_hook_is_born_in_a_cell_of_its_own(tmp_path: Path, cell: containment.Cell) -> None:
    script = tmp_path / "where"
    script.write_text("#!/bin/sh\ngrep 0:: /proc/self/cgroup >&2\n")
    os.chmod(script, 0o755)
    own = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    outcome = execute(str(script), {"PATH": "/usr/bin:/bin"}, Limits(5, 0.2, 0.5, 1 << 16), subprocess.DEVNULL)
    assert outcome.rc == 0
    assert outcome.stderr.startswith(f"{own.rstrip('/')}/vmhooks-{os.getpid()}/hook-")


def test_capped_buffer_keeps_head_and_tail() -> None:
    buffer = CappedBuffer(8)
    buffer.add(b"0123456789")
    assert buffer.text() == "0123\n[... 2 bytes of stderr dropped ...]\n6789"
