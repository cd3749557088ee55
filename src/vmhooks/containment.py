"""Keeping every descendant of a hook within reach, so that a timeout kills
them all, even those that left the hook's process group (`setsid`).

One mechanism is chosen per process, at the first hook, and logged:

- `cgroup`: a cgroup v2 per running hook, below the agent's own cgroup
  (needs root, or a delegated cgroup: systemd's `Delegate=yes`). The hook
  is created inside it (clone3 with CLONE_INTO_CGROUP, `_spawn.c`): nothing
  it starts can ever be outside, and a timeout writes `cgroup.kill`. Cells
  are reused once empty, so the hot path costs no cgroup operation at all.
- `subreaper`: without one (no cgroup v2 we may write, no clone3, or
  `_spawn` not built), this process becomes a child subreaper
  (`subreaper.py`).
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from vmhooks import subreaper

log = logging.getLogger("vmhooks.containment")

KILL_WAIT = 2.0  # seconds a killed cell may take to empty before we stop waiting
LINGER_CHECK_EVERY = 1.0  # seconds between looks at cells that background children keep busy
PROBE = "/bin/true"  # started once into a cell, to see that clone3 can do it here


class Cell(Protocol):
    """Where one hook and every process it starts are kept."""

    cgroup_fd: int  # the hook is created in the cgroup of this directory fd (-1: no cgroup)

    def started(self, pid: int) -> None:
        """The hook runs as `pid`."""

    def kill(self) -> None:
        """SIGKILL every process in the cell, and wait (bounded) until none is left."""

    def release(self) -> None:
        """The hook is done and reaped; what it left running may stay."""


class Mechanism(Protocol):
    name: str  # "cgroup" or "subreaper"
    detail: str  # where or how, for the log and reports

    def new_cell(self) -> Cell: ...


class Report(NamedTuple):
    mechanism: str
    detail: str

    def __str__(self) -> str:
        return f"{self.mechanism}: {self.detail}"


# -- cgroup v2 -----------------------------------------------------------------


class CgroupCell:
    def __init__(self, owner: CgroupMechanism, path: str) -> None:
        self.owner = owner
        self.path = path
        self.cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._events_fd = os.open(f"{path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        self.killed = False

    def started(self, pid: int) -> None:
        pass  # created inside

    def populated(self) -> bool:
        try:
            return b"populated 1" in os.pread(self._events_fd, 256, 0)
        except OSError:
            return False

    def kill(self) -> None:
        self.killed = True
        if self.owner.has_kill:
            try:
                with open(f"{self.path}/cgroup.kill", "w") as handle:
                    handle.write("1")
            except OSError as exc:
                log.warning("cannot kill cgroup %s: %s", self.path, exc.strerror)
        else:
            self._freeze_and_kill()
        deadline = time.monotonic() + KILL_WAIT
        while self.populated() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _freeze_and_kill(self) -> None:
        """Kernels before 5.14 have no cgroup.kill: frozen, nobody can fork, so
        one pass over the member list kills them all."""
        freeze = Path(self.path, "cgroup.freeze")
        try:
            freeze.write_text("1")
            for pid in Path(self.path, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        except OSError as exc:
            log.warning("cannot kill cgroup %s: %s", self.path, exc.strerror)
        finally:
            try:
                freeze.write_text("0")
            except OSError:
                pass

    def release(self) -> None:
        self.owner.give_back(self)

    def close(self) -> None:
        os.close(self.cgroup_fd)
        os.close(self._events_fd)
        try:
            os.rmdir(self.path)
        except OSError:
            pass  # background children of a hook still in it: removed at the next start


class CgroupMechanism:
    name = "cgroup"

    def __init__(self, base: str) -> None:
        self.base = base  # e.g. /sys/fs/cgroup/system.slice/vmhooks.service/vmhooks-1234
        self.detail = f"a cgroup v2 per hook under {base}"
        self.has_kill = os.path.exists(f"{base}/cgroup.kill")
        self._lock = threading.Lock()
        self._free: list[CgroupCell] = []
        self._lingering: list[CgroupCell] = []
        self._made = 0
        self._lingering_checked = 0.0

    def new_cell(self) -> CgroupCell:
        with self._lock:
            now = time.monotonic()
            if self._lingering and now - self._lingering_checked >= LINGER_CHECK_EVERY:
                self._lingering_checked = now
                busy = []
                for cell in self._lingering:
                    if cell.populated():
                        busy.append(cell)
                    elif cell.killed:
                        cell.close()
                    else:
                        self._free.append(cell)
                self._lingering = busy
            if self._free:
                return self._free.pop()
        while True:
            with self._lock:
                self._made += 1
                path = f"{self.base}/hook-{self._made}"
            try:
                os.mkdir(path)
            except FileExistsError:  # kept by a background child since an earlier mechanism
                continue
            return CgroupCell(self, path)

    def give_back(self, cell: CgroupCell) -> None:
        # A hook may leave background children behind, as on VDSM: their cell
        # is used again only once they are gone. A killed cell is never used
        # again: Linux (6.18 here) kills at birth a process cloned into a
        # cgroup whose cgroup.kill was once written.
        busy = cell.populated()
        if cell.killed and not busy:
            cell.close()
            return
        with self._lock:
            (self._lingering if busy else self._free).append(cell)

    def close(self) -> None:
        with self._lock:
            cells, self._free, self._lingering = self._free + self._lingering, [], []
        for cell in cells:
            cell.close()
        try:
            os.rmdir(self.base)
        except OSError:
            pass


def _cgroup2_mounts() -> Iterator[tuple[str, str]]:
    """(root inside the hierarchy, mount point) of every cgroup2 mount."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                fields = left.split()
                yield _unescape(fields[3]), _unescape(fields[4])


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def own_cgroup_dir() -> str | None:
    """The directory of this process's cgroup v2, or None without one we can see."""
    try:
        with open("/proc/self/cgroup") as handle:
            own = next((line[3:].rstrip("\n") for line in handle if line.startswith("0::")), None)
        if own is None:
            return None
        for root, mount in _cgroup2_mounts():
            if own == root or own.startswith(root.rstrip("/") + "/"):
                return (mount.rstrip("/") + "/" + own[len(root) :].strip("/")).rstrip("/")
    except OSError:
        return None
    return None


def _try_cgroup() -> CgroupMechanism | str:
    """A working mechanism, or why there is none."""
    try:
        from vmhooks import _spawn  # noqa: F401 - built from _spawn.c, optional
    except ImportError:
        return "vmhooks._spawn is not built (no C compiler at install)"
    own = own_cgroup_dir()
    if own is None:
        return "no cgroup v2 hierarchy"
    _remove_stale(own)
    base = f"{own}/vmhooks-{os.getpid()}"
    try:
        os.mkdir(base)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create a cgroup under {own}: {exc.strerror} (needs root or a delegated cgroup)"
    mechanism = CgroupMechanism(base)
    problem = _probe(mechanism)
    if problem:
        mechanism.close()
        return problem
    return mechanism


def _probe(mechanism: CgroupMechanism) -> str | None:
    """Start one process into a cell: the kernel, the permissions and the
    architecture all have their say."""
    from vmhooks import _spawn

    if not os.access(PROBE, os.X_OK):
        return None  # nothing to try with: the first hook will tell
    cell = mechanism.new_cell()
    try:
        pid, pidfd = _spawn.spawn(PROBE.encode(), [PROBE.encode()], [], -1, -1, -1, cell.cgroup_fd)
    except (OSError, NotImplementedError) as exc:
        return f"cannot start a process into a cgroup: {exc}"
    finally:
        cell.release()
    os.close(pidfd)
    os.waitpid(pid, 0)
    return None


def _remove_stale(own: str) -> None:
    """Directories left by agents that died: their empty cells and themselves."""
    try:
        names = [name for name in os.listdir(own) if name.startswith("vmhooks-")]
    except OSError:
        return
    for name in names:
        pid = name.removeprefix("vmhooks-")
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        directory = f"{own}/{name}"
        try:
            for leaf in os.listdir(directory):
                if os.path.isdir(f"{directory}/{leaf}"):
                    try:
                        os.rmdir(f"{directory}/{leaf}")
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise
            os.rmdir(directory)
        except OSError:
            pass


# -- one per process -------------------------------------------------------------

_lock = threading.Lock()
_current: Mechanism | None = None


def current() -> Mechanism:
    """The mechanism in force, chosen at the first call (and logged)."""
    if _current is None:
        with _lock:
            if _current is None:
                _choose("auto")
    assert _current is not None
    return _current


def use(name: str) -> Mechanism:
    """Choose by name: "auto" (cgroup if possible, else subreaper), "cgroup"
    (OSError if impossible) or "subreaper"."""
    with _lock:
        return _choose(name)


def _choose(name: str) -> Mechanism:
    global _current
    if name not in ("auto", "cgroup", "subreaper"):
        raise ValueError(f"unknown containment {name!r}")
    old, why = _current, ""
    chosen: Mechanism | str = _try_cgroup() if name != "subreaper" else "chosen"
    if isinstance(chosen, str):
        if name == "cgroup":
            raise OSError(errno.EPERM, chosen)
        why = f"; no cgroup: {chosen}" if name == "auto" else ""
        chosen = subreaper.SubreaperMechanism()
    else:
        atexit.register(chosen.close)
    _current = chosen
    log.info("hook containment: %s%s", chosen.detail, why)
    if isinstance(old, CgroupMechanism) and old is not chosen:
        old.close()
    return chosen


def report() -> Report:
    mechanism = current()
    return Report(mechanism.name, mechanism.detail)
