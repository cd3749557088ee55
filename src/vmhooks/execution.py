"""Running one hook script: spawn it in a session of its own and in its
containment cell, read its stderr (capped) until it exits, and at its
deadline kill it with everything it started.

Spawning is pluggable (`Spawn`): exec through `subprocess` here, or a fork
of a warm interpreter (`forkserver`); the waiting, the timeout and the kill
are the same for both.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from vmhooks import containment


class Limits(NamedTuple):
    seconds: float  # the script's timeout
    kill_grace: float  # seconds between SIGTERM and SIGKILL
    drain_timeout: float  # seconds to wait for stderr EOF after exit
    stderr_cap: int  # bytes of stderr kept (head and tail)


class Outcome(NamedTuple):
    rc: int | None  # exit code; -N when killed by signal N; None when it never ran
    timed_out: bool
    stderr: str
    exec_error: str = ""
    fast_path: bool = False  # forked from a warm interpreter rather than exec'd
    cut: str = ""  # why it was killed before its timeout (a Cutoff's reason), if it was


class Cutoff:
    """Ends, before their timeouts, the hooks of every chain that shares it:
    the agent stopping kills the hooks of the operations still in flight, as
    a timeout would. One pipe, readable once fired, in each waiting poll()."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.reason = ""

    @property
    def fd(self) -> int:
        return self._read

    @property
    def fired(self) -> bool:
        return bool(self.reason)

    def fire(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
            os.write(self._write, b"!")

    def close(self) -> None:
        """Only once no chain can be waiting on it any more."""
        for fd in (self._read, self._write):
            os.close(fd)


class Child(Protocol):
    """A spawned script, not reaped until `reap`: its pid (and so its process
    group) cannot be reused while we may still signal it."""

    pid: int
    exit_fd: int | None  # readable once it exited (a pidfd); None: poll `exited`
    fast_path: bool  # forked by a fork server rather than exec'd

    def exited(self) -> bool: ...

    def reap(self) -> int:
        """Wait for it and return its exit code (-N: killed by signal N)."""

    def close(self) -> None: ...


# (path, env, stdout fd, stderr fd, cell) -> Child; raises OSError when it cannot start.
Spawn = Callable[[str, Mapping[str, str], int, int, containment.Cell], Child]


class PopenChild:
    fast_path = False

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.exit_fd: int | None = None
        try:
            self.exit_fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass

    def exited(self) -> bool:
        return _exited(self.pid)

    def reap(self) -> int:
        return self.proc.wait()

    def close(self) -> None:
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None


class ClonedChild:
    """A child of ours started by clone3 (`_spawn`, or a fork server with
    CLONE_PARENT), with the pidfd that came with it."""

    def __init__(self, pid: int, pidfd: int, fast_path: bool = False) -> None:
        self.pid = pid
        self.exit_fd: int | None = pidfd
        self.fast_path = fast_path

    def exited(self) -> bool:
        return _exited(self.pid)

    def reap(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def close(self) -> None:
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None


def _exited(pid: int) -> bool:
    """Whether our child `pid` exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def exec_spawn(path: str, env: Mapping[str, str], stdout: int, stderr: int, cell: containment.Cell) -> Child:
    """exec `path` in a session of its own, created inside its cell."""
    if cell.cgroup_fd >= 0:
        from vmhooks import _spawn

        envp = [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in env.items()]
        pid, pidfd = _spawn.spawn(os.fsencode(path), [os.fsencode(path)], envp, -1, stdout, stderr, cell.cgroup_fd)
        cell.started(pid)
        return ClonedChild(pid, pidfd)
    proc = subprocess.Popen([path], stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    cell.started(proc.pid)
    return PopenChild(proc)


def execute(
    path: str,
    env: Mapping[str, str],
    limits: Limits,
    stdout: int = subprocess.DEVNULL,
    spawn: Spawn = exec_spawn,
    cutoff: Cutoff | None = None,
) -> Outcome:
    """Run one script and wait for it: until it exits and its stderr closes,
    at most `limits.seconds` (or until `cutoff` fires), then at most
    `drain_timeout` more for pipes that its background children still hold."""
    cell = containment.current().new_cell()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            child = spawn(path, env, stdout, write_end, cell)
        except OSError as exc:
            return Outcome(None, False, "", f"cannot execute: {exc.strerror or exc}")
        finally:
            os.close(write_end)
        try:
            stderr, killed = _wait(child, read_end, limits, cell, cutoff)
            rc = child.reap()
        finally:
            child.close()
    finally:
        os.close(read_end)
        cell.release()
    cut = killed if killed != TIMED_OUT else ""
    return Outcome(rc, bool(killed), stderr.text(), "", child.fast_path, cut)


TIMED_OUT = "timed out"


def _wait(
    child: Child, stderr_fd: int, limits: Limits, cell: containment.Cell, cutoff: Cutoff | None = None
) -> tuple[CappedBuffer, str]:
    """Its stderr, and why it was killed: TIMED_OUT, the cutoff's reason, or
    '' when it exited by itself."""
    stderr = CappedBuffer(limits.stderr_cap)
    deadline = time.monotonic() + limits.seconds
    # poll(2), not a selectors.DefaultSelector: no epoll instance to create,
    # fill, empty and close for every script; one syscall per wait.
    poller = select.poll()
    poller.register(stderr_fd, select.POLLIN)
    if child.exit_fd is not None:
        poller.register(child.exit_fd, select.POLLIN)
    if cutoff is not None:
        poller.register(cutoff.fd, select.POLLIN)
    stderr_open = True
    exited_at: float | None = None
    while True:
        now = time.monotonic()
        if exited_at is None and child.exit_fd is None and child.exited():
            exited_at = now
        if exited_at is not None and (not stderr_open or now >= exited_at + limits.drain_timeout):
            return stderr, ""
        if exited_at is None and (now >= deadline or (cutoff is not None and cutoff.fired)):
            _kill(child, cell, limits.kill_grace)
            return stderr, cutoff.reason if cutoff is not None and cutoff.fired else TIMED_OUT
        limit = (exited_at + limits.drain_timeout) if exited_at is not None else deadline
        wait = limit - now if child.exit_fd is not None else min(limit - now, 0.05)
        # poll() takes milliseconds in a C int: cap one wait, the loop goes on.
        for fd, _ in poller.poll(min(max(wait, 0.0), 3600.0) * 1000.0):
            if cutoff is not None and fd == cutoff.fd:
                poller.unregister(fd)  # stays readable: `fired` says so from now on
                continue
            if fd == child.exit_fd:
                poller.unregister(fd)
                exited_at = time.monotonic()
                continue
            chunk = os.read(fd, 1 << 16)
            if chunk:
                stderr.add(chunk)
            else:
                poller.unregister(fd)
                stderr_open = False


def _kill(child: Child, cell: containment.Cell, grace: float) -> None:
    """SIGTERM the script's process group; after `grace` (or once it exited),
    SIGKILL everything in its cell, and its group.

    The leader is not reaped until then, so its pid (the group id) cannot be
    reused by an unrelated process meanwhile."""
    _signal_group(child.pid, signal.SIGTERM)
    if child.exit_fd is not None:
        exit_watch = select.poll()
        exit_watch.register(child.exit_fd, select.POLLIN)
        exit_watch.poll(grace * 1000.0)
    else:
        end = time.monotonic() + grace
        while time.monotonic() < end and not child.exited():
            time.sleep(0.01)
    _signal_group(child.pid, signal.SIGKILL)
    cell.kill()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class CappedBuffer:
    """Keeps the first and the last `cap/2` bytes of a stream, counts the rest."""

    def __init__(self, cap: int) -> None:
        self.half = max(cap // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            excess = len(self.tail) - self.half
            if excess > 0:
                del self.tail[:excess]
                self.dropped += excess

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if self.dropped:
            return f"{head}\n[... {self.dropped} bytes of stderr dropped ...]\n{tail}"
        return head + tail
