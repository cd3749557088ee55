"""The fallback containment where no cgroup can be had: this process becomes
a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a hook's descendants
whose parents die are re-parented to it rather than to init, and a timeout
kills what the hook left: its process tree, its session and process group,
and the orphans it handed to us.

The attribute is per process and the agent has other threads and other
children, so orphans are told apart from children someone else waits for:
a zombie child is reaped here only after it was seen a zombie for a whole
second (a caller that waits for its own child has done so by then), and
hook leaders being run are never touched. An orphan counts as a timed-out
hook's when it was re-parented to us, started after the hook did, left our
session (hooks run in sessions of their own) and belongs to no other hook
running at the same time.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from typing import NamedTuple

log = logging.getLogger("vmhooks.containment")

PR_SET_CHILD_SUBREAPER = 36
REAP_EVERY = 1.0  # seconds between looks for orphans to reap
KILL_ROUNDS = 100  # each round kills what is found; killing parents re-parents their children to us


class ProcessInfo(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot


def process_info(pid: int) -> ProcessInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow its last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcessInfo(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def processes() -> dict[int, ProcessInfo]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = process_info(int(name))
            if info is not None:
                found[info.pid] = info
    return found


def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class SubreaperCell:
    cgroup_fd = -1

    def __init__(self, owner: SubreaperMechanism) -> None:
        self.owner = owner
        self.leader: ProcessInfo | None = None

    def started(self, pid: int) -> None:
        self.leader = process_info(pid) or ProcessInfo(pid, "R", os.getpid(), pid, pid, 0)
        self.owner.running(pid, True)

    def kill(self) -> None:
        if self.leader is None:
            return
        me, my_sid, leader = os.getpid(), os.getsid(0), self.leader
        for _ in range(KILL_ROUNDS):
            table = processes()
            targets = self._targets(table, me, my_sid, leader)
            alive = [table[pid] for pid in targets if table[pid].state not in ("Z", "X")]
            for info in alive:
                _kill_exactly(info)
            for pid in targets:  # dead orphans of the hook, now ours: nobody else will reap them
                if pid != leader.pid and table[pid].ppid == me and table[pid].state == "Z":
                    _reap(pid)
            if not alive:
                return
            time.sleep(0.01)
        log.warning("hook %d: descendants still alive after %d kill rounds", leader.pid, KILL_ROUNDS)

    def _targets(self, table: dict[int, ProcessInfo], me: int, my_sid: int, leader: ProcessInfo) -> set[int]:
        children: dict[int, list[int]] = defaultdict(list)
        for info in table.values():
            children[info.ppid].append(info.pid)
        roots = {leader.pid} | {info.pid for info in table.values() if leader.pid in (info.sid, info.pgid)}
        others = self.owner.leaders() - {leader.pid}
        for pid in children.get(me, ()):
            info = table[pid]
            if (
                pid not in others
                and info.start >= leader.start
                and info.sid != my_sid
                and info.sid not in others
            ):
                roots.add(pid)
        targets: set[int] = set()
        stack = list(roots)
        while stack:
            pid = stack.pop()
            if pid in targets or pid == me or pid not in table:
                continue
            targets.add(pid)
            stack.extend(children.get(pid, ()))
        return targets

    def release(self) -> None:
        if self.leader is not None:
            self.owner.running(self.leader.pid, False)


def _kill_exactly(info: ProcessInfo) -> None:
    """SIGKILL the process `info` describes, never another one that took its pid."""
    try:
        pidfd = os.pidfd_open(info.pid)
    except OSError:
        return
    try:
        now = process_info(info.pid)
        if now is not None and now.start == info.start:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class SubreaperMechanism:
    name = "subreaper"

    def __init__(self) -> None:
        self.enabled = set_subreaper()
        if self.enabled:
            self.detail = (
                f"process {os.getpid()} is a child subreaper; timeouts kill the hook's tree, session and orphans"
            )
        else:
            self.detail = "no subreaper (prctl failed): timeouts kill the hook's tree, session and process group"
        self._lock = threading.Lock()
        self._leaders: set[int] = set()
        self._zombies_seen: set[int] = set()
        if self.enabled:
            threading.Thread(target=self._reap_orphans, name="vmhooks-reaper", daemon=True).start()

    def new_cell(self) -> SubreaperCell:
        return SubreaperCell(self)

    def running(self, pid: int, yes: bool) -> None:
        with self._lock:
            (self._leaders.add if yes else self._leaders.discard)(pid)

    def leaders(self) -> set[int]:
        with self._lock:
            return set(self._leaders)

    def _reap_orphans(self) -> None:
        while True:
            time.sleep(REAP_EVERY)
            try:
                self.reap_once()
            except Exception:  # noqa: BLE001 - the reaper must outlive any surprise
                log.exception("orphan reaper")

    def reap_once(self) -> None:
        try:
            if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                self._zombies_seen = set()
                return
        except ChildProcessError:
            return
        me = os.getpid()
        zombies = {info.pid for info in processes().values() if info.ppid == me and info.state == "Z"}
        for pid in (zombies & self._zombies_seen) - self.leaders():
            _reap(pid)
        self._zombies_seen = zombies
