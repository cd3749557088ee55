"""What every part of the agent shares: its settings and directories, the
libvirt connection, the VM registry and the recorded hook calls."""
from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from vmhooks.agent import libvirtconn as lv
from vmhooks.agent.hooks import HookCalls
from vmhooks.agent.outcome import Recorder
from vmhooks.agent.registry import Registry
from vmhooks.agent.reports import Samples
from vmhooks.config import AgentSettings
from vmhooks.errors import UsageError, WrongStateError
from vmhooks.store import Store, VmRecord


class AgentContext:
    # Seconds a destination waits for the source's migrationFinish after
    # libvirt reports the VM running here, before adopting it on its own.
    migration_finish_grace = 30.0
    # Seconds an announced incoming VM may take to show up in libvirt.
    incoming_timeout = 300.0

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        # Hook payloads live under the run dir: tmpfs on a real host (/run),
        # so a chain's private directory costs no disk I/O.
        self.payload_dir = settings.run_dir / "payloads"
        self.flags_dir = settings.run_dir / "launch-flags"
        # The socket group must be able to reach the socket through the run dir.
        run_mode = 0o711 if settings.socket_group else 0o700
        for directory, mode in ((self.state_dir, 0o700), (settings.run_dir, run_mode),
                                (self.payload_dir, 0o700), (self.flags_dir, 0o700)):  # fmt: skip
            private_directory(directory, mode)
        # First: a database vmhooks cannot use stops the start before anything is written.
        self.store = Store(self.state_dir / "vmhooks.db")
        # libvirtd writes the images: a session daemon as another user needs a
        # directory of its own, so it can be set apart from the private state.
        self.save_dir = settings.save_dir or self.state_dir / "hibernation"
        self.save_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.registry = Registry(self.store)
        self.recorder = Recorder(self.store, settings)
        self.operation = self.recorder.operation
        self.hooks = HookCalls(settings, self.recorder, self.payload_dir, self.registry.lend)
        self._conn: libvirt.virConnect | None = None
        self.samples = Samples()  # for the rates in VM and host stats
        self.started = time.time()

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise WrongStateError("the agent is not connected to libvirt")
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> libvirt.virConnect:
        self._conn = lv.open_connection(self.settings.libvirt_uri)
        return self._conn

    def disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def lookup(self, vm_id: str) -> libvirt.virDomain | None:
        return lv.lookup(self.conn, vm_id)

    def domain(self, vm: VmRecord) -> libvirt.virDomain:
        domain = self.lookup(vm.vm_id)
        if domain is None:
            raise WrongStateError(f"VM {vm.name} ({vm.vm_id}) is not known to libvirt")
        return domain

    @staticmethod
    def schedule(seconds: float, function: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(seconds, function, args)
        timer.daemon = True
        timer.start()


def private_directory(directory: Path, mode: int) -> None:
    """Make `directory` (or accept it): ours, not a symlink, and neither
    readable nor writable by anyone else, since hooks' payloads, the VMs'
    custom properties and the history live there. (0711 lets the socket
    group through to the socket, and no further.)"""
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{directory} must be a directory, not a symlink")
    if st.st_uid != os.geteuid():
        raise UsageError(f"{directory} is owned by uid {st.st_uid}, not the agent's user: chown it or choose another")
    if st.st_mode & 0o066:
        who = "read" if not st.st_mode & 0o022 else "written" if not st.st_mode & 0o044 else "read and written"
        raise UsageError(
            f"{directory} can be {who} by group or others (mode {stat.S_IMODE(st.st_mode):04o}): chmod {mode:o} {directory}"
        )
    if mode == 0o711 and stat.S_IMODE(st.st_mode) & 0o011 != 0o011:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | 0o011)


def empty_directory(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
