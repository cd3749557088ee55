"""The agent's end of its fork servers (see `forkserver`): starting one per
interpreter and environment, asking it for a hook, and reaping the stage
processes it leaves us (`forkserver_stage`)."""
from __future__ import annotations

import atexit
import logging
import marshal
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmhooks.execution import ClonedChild

log = logging.getLogger("vmhooks.forkserver")

# Imported by every fork server before it waits: the hooks' API and what it
# loads lazily, and the cheap `vdsm` compatibility modules (one that is
# missing is skipped). A module here must read nothing at import that a
# hook's chain could change: custom properties cannot name PYTHON*, LC_*,
# HOME, TZ... (environment.RESERVED), and these read settings when used.
PREIMPORTS: tuple[str, ...] = (
    "hooking",
    "vdsm.hook.hooking",
    "xml.dom.minidom",
    "xml.dom.expatbuilder",  # what minidom.parseString loads at its first call
    "json",
    "subprocess",
    "tempfile",
    # The cheap `vdsm` compatibility modules: standard library only, nothing read at import.
    "vdsm.common.units",
    "vdsm.common.errors",
    "vdsm.common.cmdutils",
    "vdsm.common.commands",
    "vdsm.common.constants",
    "vdsm.common.cpuarch",
    "vdsm.common.fileutils",
    "vdsm.constants",
    "vdsm.utils",
)
SERVER_PROGRAM = Path(__file__).with_name("forkserver_main.py")
START_TIMEOUT = 30.0  # seconds for a server to import and say hello
REQUEST_TIMEOUT = 10.0  # seconds for an answer (a fork); then the script is exec'd


class NotEligible(Exception):
    """The server would not run this script exactly as exec would."""


class Server:
    """One running fork server and the connection to it; thread-safe."""

    def __init__(self, interpreter: str, env: Mapping[str, str]) -> None:
        self.interpreter = interpreter
        self._lock = threading.Lock()
        self.broken = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        try:
            self.proc = subprocess.Popen(
                [interpreter, str(SERVER_PROGRAM), str(theirs.fileno()), *PREIMPORTS],
                env=dict(env),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # the agent's terminal signals are not for it
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock.settimeout(START_TIMEOUT)
        try:
            kind, refused, extra_tops, version, staged = self._receive()[0]
        except (OSError, ValueError, EOFError, TypeError) as exc:
            self.close()
            raise OSError(f"fork server for {interpreter} did not start: {exc}") from None
        self.sock.settimeout(REQUEST_TIMEOUT)
        self._stages_lock = threading.Lock()
        self._stages: list[int] = []  # exited or exiting stages (forkserver_stage), children of ours to reap
        self.refused: str = refused
        self.shadowable = frozenset(extra_tops)  # top-level modules a hook's own directory could shadow
        self.version = version
        self.staged = staged  # hooks cloned from stages forked ahead (forkserver_stage), not each forked
        self.stale_checked = 0.0

    def _receive(self, flags: int = 0) -> tuple[tuple, list[int]]:
        """The next answer; a stage announced meanwhile (one that saw the
        agent leave) is noted for reaping."""
        while True:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4), flags)
            if not data:
                raise EOFError("the fork server is gone")
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    fds += [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
            message = marshal.loads(data)
            if message[0] != "stage":
                return message, fds
            self.reap_stage(message[1])

    def reap_stage(self, pid: int) -> None:
        """Reap a stage if it has exited, else later (it exits once its hook is gone)."""
        with self._stages_lock:
            self._stages.append(pid)
            self._reap_stages()

    def reap_stages(self, pids: Sequence[int], wait: float) -> None:
        """Wait up to `wait` seconds for these stages to exit, reaping them."""
        deadline = time.monotonic() + wait
        while True:
            with self._stages_lock:
                self._reap_stages()
                pending = [pid for pid in pids if pid in self._stages]
            if not pending or time.monotonic() >= deadline:
                return
            time.sleep(0.0005)

    def _reap_stages(self) -> None:
        left = []
        for pid in self._stages:
            try:
                done = os.waitpid(pid, os.WNOHANG)[0] != 0
            except ChildProcessError:  # reaped already (a subreaper's sweep)
                done = True
            if not done:
                left.append(pid)
        self._stages = left

    def _ask(self, request: tuple, fds: Sequence[int] = ()) -> tuple[tuple, list[int]]:
        with self._lock:
            if self.broken:
                raise EOFError("the fork server stopped answering")
            try:
                message = marshal.dumps(request)
                if fds:
                    self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(
                        fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))])  # fmt: skip
                else:
                    self.sock.send(message)
                return self._receive()
            except (OSError, EOFError, ValueError):
                self.broken = True  # a late answer would be taken for the next question's
                raise

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None

    def stale(self) -> list[str]:
        """Modules changed on disk since the server imported them (checked at most once a second)."""
        now = time.monotonic()
        if now - self.stale_checked < 1.0:
            return []
        self.stale_checked = now
        return list(self._ask(("stale",))[0][1])

    def spawn(
        self, common: bytes, script: tuple[str, tuple[str, ...], str], fds: Mapping[str, int],
        following: tuple[str, tuple[str, ...], str] | None = None,
    ) -> ClonedChild:
        """Have the server start the hook `script` (path, command line, process
        name) with the chain's `common` spec, as a child of ours (CLONE_PARENT):
        we wait for it and kill it as any hook we started ourselves. The
        script `following` it in the chain, if any, is set up meanwhile."""
        roles = tuple(role for role in ("stdin", "stdout", "stderr", "cgroup") if role in fds)
        answer, got = self._ask(("spawn", common, (*script, roles), following), [fds[role] for role in roles])
        if answer[0] == "started":
            if len(answer) > 2:
                return StagedChild(answer[1], got[0], answer[2], self)
            return ClonedChild(answer[1], got[0], fast_path=True)
        for fd in got:
            os.close(fd)
        if answer[0] == "exec":
            raise NotEligible(answer[1])
        raise OSError(answer[1], answer[2])

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)  # the server (or its stage) sees EOF and leaves
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:  # the stages it announced before it left
            while True:
                for fd in self._receive(socket.MSG_DONTWAIT)[1]:
                    os.close(fd)
        except (OSError, EOFError, ValueError):
            pass
        self.sock.close()
        self.reap_stages(list(self._stages), wait=2.0)


class StagedChild(ClonedChild):
    """A hook cloned by a stage of the server (forkserver_stage), which is
    our child too: it exits once the hook is gone, and is reaped then."""

    def __init__(self, pid: int, pidfd: int, stage: int, server: Server) -> None:
        super().__init__(pid, pidfd, fast_path=True)
        self.stage = stage
        self.server = server

    def reap(self) -> int:
        code = super().reap()
        self.server.reap_stage(self.stage)
        return code


class Servers:
    """The fork servers of this process, one per (interpreter, environment)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[tuple, Server | str] = {}
        atexit.register(self.close)

    def get(self, interpreter: str, env: Mapping[str, str]) -> Server | None:
        key = (interpreter, tuple(env.items()))
        with self._lock:
            server = self._servers.get(key)
            if isinstance(server, str):
                return None  # refused earlier: said once, not again
            if server is not None and server.alive():
                try:
                    stale = server.stale()
                except (OSError, EOFError) as exc:
                    stale = [f"no answer ({exc})"]
                if not stale:
                    return server
                log.info("fork server for %s restarts: %s changed", interpreter, ", ".join(stale[:5]))
            if server is not None:
                server.close()
            try:
                server = Server(interpreter, env)
            except OSError as exc:
                log.warning("%s: Python hooks are exec'd", exc)
                self._servers[key] = str(exc)
                return None
            if server.refused:
                log.warning("fork server for %s refused (%s): Python hooks are exec'd", interpreter, server.refused)
                self._servers[key] = server.refused
                server.close()
                return None
            how = "stages forked ahead" if server.staged else "a fork per hook"
            log.info("fork server for %s started (pid %d, %s)", interpreter, server.proc.pid, how)
            self._servers[key] = server
            return server

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            if isinstance(server, Server):
                server.close()


SERVERS = Servers()
