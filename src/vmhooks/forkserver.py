"""Python hooks through a fork server: the same hook, forked from a warm
interpreter instead of started from nothing (issue 13).

A fork server (`forkserver_main.py`) is a separate, single-threaded Python
process (the agent itself, which has threads, is never forked), started
lazily per interpreter and environment. It has imported `PREIMPORTS` and
waits. For each Python hook the runner sends it what exec would have given
the hook (argv, environment, working directory, umask, rlimits, signal mask,
the three standard fds and the hook's cgroup); the server forks a child
that sets all of that up and runs the script in a fresh `__main__`.

A script takes this fast path only when it is certain to behave the same:
its shebang names the interpreter exactly (`#!/path/python` or
`#!/usr/bin/env python3`, no options) and that interpreter is the agent's
own or one listed in the settings (compared after resolving links); it is a
regular file, not setuid/setgid, not opted out by `fast_path = false` or a
glob of `fast_path_exclude`; no module the server imported would be
shadowed by one beside it; and the server could compile it without a
warning. Anything else is exec'd as before.
"""
from __future__ import annotations

import atexit
import fnmatch
import logging
import marshal
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from vmhooks import containment
from vmhooks.execution import Child, ClonedChild, Spawn

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
MAX_SHEBANG = 255  # the kernel reads at most this much of a #! line


class FastPathSettings(NamedTuple):
    enabled: bool = True
    exclude: tuple[str, ...] = ()  # globs matched against "point/script" and the script's path
    interpreters: tuple[str, ...] = ()  # more interpreters to serve besides the agent's own


class NotEligible(Exception):
    """The server would not run this script exactly as exec would."""


class Plan(NamedTuple):
    """How exec would start a script: what the kernel (or env) runs."""

    interpreter: str  # the executable started, as named (its sys.executable)
    cmdline: tuple[str, ...]  # argv the interpreter gets (/proc/<pid>/cmdline, sys.orig_argv)
    comm: str  # the process name the kernel gives it


def plan(path: str, point: str, env: Mapping[str, str], settings: FastPathSettings) -> Plan | None:
    """How `path` would be exec'd, when the fast path may take it; else None.
    (Whether its interpreter is one to serve is `servable`'s question.)"""
    if not settings.enabled:
        return None
    name = os.path.basename(path)
    for glob in settings.exclude:
        if fnmatch.fnmatchcase(f"{point}/{name}", glob) or fnmatch.fnmatchcase(path, glob):
            return None
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            head = handle.read(MAX_SHEBANG + 1)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return None
    line, newline, _ = head.partition(b"\n")
    if not newline or not line.startswith(b"#!") or any(byte < 0x20 and byte != 0x09 for byte in line):
        return None
    # The kernel splits the line at the first blank: the interpreter, then one argument.
    interpreter_word, _, argument = line[2:].strip(b" \t").replace(b"\t", b" ").partition(b" ")
    argument = argument.strip(b" ")
    words = [os.fsdecode(word) for word in (interpreter_word, argument) if word]
    if len(words) == 1 and words[0].startswith("/"):
        interpreter = words[0]
        result = Plan(interpreter, (interpreter, path), name)
    elif len(words) == 2 and os.path.basename(words[0]) == "env" and words[0].startswith("/") and "/" not in words[1]:
        found = _which(words[1], env.get("PATH", os.defpath))
        if found is None:
            return None
        result = Plan(found, (found, path), os.path.basename(found))
    else:
        return None
    return result


def _which(program: str, search: str) -> str | None:
    """What env(1) runs for `program`: the first executable in PATH."""
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _real(path: str) -> str:
    return os.path.realpath(path)


def _servable(extra: Sequence[str]) -> frozenset[str]:
    return frozenset(_real(path) for path in (sys.executable, *extra))


def servable(interpreter: str, settings: FastPathSettings) -> bool:
    """The agent's own interpreter, or one the settings list (after links)."""
    return _real(interpreter) in _servable(settings.interpreters)


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
            kind, refused, extra_tops, version = self._receive()[0]
        except (OSError, ValueError, EOFError, TypeError) as exc:
            self.close()
            raise OSError(f"fork server for {interpreter} did not start: {exc}") from None
        self.sock.settimeout(REQUEST_TIMEOUT)
        self.refused: str = refused
        self.shadowable = frozenset(extra_tops)  # top-level modules a hook's own directory could shadow
        self.version = version
        self.stale_checked = 0.0

    def _receive(self) -> tuple[tuple, list[int]]:
        data, ancillary, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
        if not data:
            raise EOFError("the fork server is gone")
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
        return marshal.loads(data), fds

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

    def spawn(self, spec: dict, fds: Mapping[str, int]) -> ClonedChild:
        """Have the server fork the hook, as a child of ours (CLONE_PARENT):
        we wait for it and kill it as any hook we started ourselves."""
        roles = [role for role in ("stdin", "stdout", "stderr", "cgroup") if role in fds]
        spec["fds"] = roles
        answer, got = self._ask(("spawn", spec), [fds[role] for role in roles])
        if answer[0] == "started":
            return ClonedChild(answer[1], got[0], fast_path=True)
        for fd in got:
            os.close(fd)
        if answer[0] == "exec":
            raise NotEligible(answer[1])
        raise OSError(answer[1], answer[2])

    def close(self) -> None:
        self.sock.close()  # the server sees EOF and leaves
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
            log.info("fork server for %s started (pid %d)", interpreter, server.proc.pid)
            self._servers[key] = server
            return server

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            if isinstance(server, Server):
                server.close()


SERVERS = Servers()


class ChainContext(NamedTuple):
    """What every hook of a chain inherits from the agent, read once per chain."""

    cwd: str
    umask: int
    rlimits: dict[int, tuple[int, int]]


def chain_context() -> ChainContext:
    return ChainContext(os.getcwd(), _umask(), _rlimits())


def _umask() -> int:
    """This process's umask, read without setting it (other threads create files)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise OSError("no Umask in /proc/self/status")


def _rlimits() -> dict[int, tuple[int, int]]:
    limits = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            number = getattr(resource, name)
            try:
                limits[number] = resource.getrlimit(number)
            except (ValueError, OSError):
                pass
    return limits


class FastSpawn:
    """A `Spawn` for one chain: scripts the fast path may take are forked by
    a server, the others (and any the server turns down) are exec'd. What
    is the same for every script of the chain is worked out once."""

    def __init__(
        self, point: str, settings: FastPathSettings, server_env: Callable[[], Mapping[str, str]], fallback: Spawn
    ) -> None:
        self.point = point
        self.settings = settings
        self.server_env = server_env  # every hook's environment but the chain's own variables, made when needed
        self.fallback = fallback
        self._servers: dict[str, Server | None] = {}  # interpreter -> its server (None: exec)
        self._listings: dict[str, set[str]] = {}
        self._chain: tuple[Mapping[str, str], dict] | None = None  # the env, and the spec fields it gives

    def __call__(self, path: str, env: Mapping[str, str], stdout: int, stderr: int, cell: containment.Cell) -> Child:
        script_plan = plan(path, self.point, env, self.settings)
        server = self._server(script_plan.interpreter) if script_plan is not None else None
        if server is None or script_plan is None or self._shadowed(path, server):
            return self.fallback(path, env, stdout, stderr, cell)
        common = self._common(env)
        fds = {"stdout": stdout, "stderr": stderr}
        if common["stdin"]:
            fds["stdin"] = 0
        if cell.cgroup_fd >= 0:
            fds["cgroup"] = cell.cgroup_fd
        spec = {**common, "path": path, "cmdline": list(script_plan.cmdline), "comm": script_plan.comm}
        try:
            child = server.spawn(spec, fds)
        except NotEligible as why:
            log.debug("%s: exec'd: %s", path, why)
            return self.fallback(path, env, stdout, stderr, cell)
        except (OSError, EOFError, ValueError) as exc:
            if server.alive():
                raise  # the server answered: the fork itself failed, as an exec can
            log.warning("fork server for %s failed (%s): %s is exec'd", script_plan.interpreter, exc, path)
            self._servers[script_plan.interpreter] = None
            return self.fallback(path, env, stdout, stderr, cell)
        cell.started(child.pid)
        return child

    def _server(self, interpreter: str) -> Server | None:
        if interpreter not in self._servers:
            served = servable(interpreter, self.settings)
            self._servers[interpreter] = SERVERS.get(interpreter, self.server_env()) if served else None
        return self._servers[interpreter]

    def _common(self, env: Mapping[str, str]) -> dict:
        """The spec fields every script of the chain shares (the runner hands
        each the same environment)."""
        if self._chain is None or self._chain[0] is not env:
            context = chain_context()
            self._chain = (env, {
                "cwd": context.cwd,
                "umask": context.umask,
                "rlimits": context.rlimits,
                "sigmask": sorted(int(number) for number in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                "env": [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in env.items()],
                "stdin": _valid(0),
            })  # fmt: skip
        return self._chain[1]

    def _shadowed(self, path: str, server: Server) -> bool:
        """A module beside the script that the server has imported from
        elsewhere: the script would import its neighbour, the child the server's."""
        directory = os.path.dirname(os.path.realpath(path))
        names = self._listings.get(directory)
        if names is None:
            try:
                names = {_module_name(entry) for entry in os.listdir(directory)}
            except OSError:
                names = set()
            self._listings[directory] = names
        return not names.isdisjoint(server.shadowable)


def _module_name(entry: str) -> str:
    return entry.partition(".")[0]


def _valid(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
