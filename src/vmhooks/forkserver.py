"""Python hooks through a fork server: the same hook, forked from a warm
interpreter instead of started from nothing (issue 13).

A fork server (`forkserver_main.py`) is a separate, single-threaded Python
process (the agent itself, which has threads, is never forked), started
lazily per interpreter and environment. It has imported `PREIMPORTS` and
waits. For each Python hook the runner sends it what exec would have given
the hook (argv, environment, working directory, umask, rlimits, signal mask,
the three standard fds and the hook's cgroup); a process the server made
ahead of time (`forkserver_stage`) becomes the hook, set up as exec would,
and runs the script in a fresh `__main__` (a server that cannot load
`_spawn` forks one per hook). `forkserver_link` holds the connections.

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

import fnmatch
import logging
import marshal
import os
import resource
import signal
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from vmhooks import containment
from vmhooks.execution import Child, Spawn
from vmhooks.forkserver_link import PREIMPORTS, SERVERS, NotEligible, Server, StagedChild

__all__ = [
    "PREIMPORTS", "SERVERS", "FastPathSettings", "FastSpawn", "NotEligible", "Plan", "Server", "plan", "servable",
]

log = logging.getLogger("vmhooks.forkserver")

MAX_SHEBANG = 255  # the kernel reads at most this much of a #! line


class FastPathSettings(NamedTuple):
    enabled: bool = True
    exclude: tuple[str, ...] = ()  # globs matched against "point/script" and the script's path
    interpreters: tuple[str, ...] = ()  # more interpreters to serve besides the agent's own


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
    try:  # os-level calls: this runs for every script of every chain
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            return None
        head = os.read(fd, MAX_SHEBANG + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    line, newline, _ = head.partition(b"\n")
    visible = line.replace(b"\t", b"")
    if not newline or not line.startswith(b"#!") or min(visible) < 0x20:
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
        self, point: str, settings: FastPathSettings, server_env: Callable[[], Mapping[str, str]], fallback: Spawn,
        chain: Sequence[str] = (),
    ) -> None:
        self.point = point
        self.settings = settings
        self.server_env = server_env  # every hook's environment but the chain's own variables, made when needed
        self.fallback = fallback
        self._following = dict(zip(chain, chain[1:]))  # script -> the next one of the chain
        self._servers: dict[str, Server | None] = {}  # interpreter -> its server (None: exec)
        self._listings: dict[str, set[str]] = {}
        self._directories: dict[str, str] = {}  # script -> the directory its link leads to
        self._stages: dict[str, list[int]] = {}  # interpreter -> stages of this chain's hooks, reaped at its end
        self._chain: tuple[Mapping[str, str], bytes, bool] | None = None  # the env, the spec it gives, stdin

    def __call__(self, path: str, env: Mapping[str, str], stdout: int, stderr: int, cell: containment.Cell) -> Child:
        script_plan = plan(path, self.point, env, self.settings)
        server = self._server(script_plan.interpreter) if script_plan is not None else None
        if server is None or script_plan is None or self._shadowed(path, server):
            return self.fallback(path, env, stdout, stderr, cell)
        common, stdin = self._common(env)
        fds = {"stdout": stdout, "stderr": stderr}
        if stdin:
            fds["stdin"] = 0
        if cell.cgroup_fd >= 0:
            fds["cgroup"] = cell.cgroup_fd
        script = (path, script_plan.cmdline, script_plan.comm)
        try:
            child = server.spawn(common, script, fds, self._after(path, env, script_plan.interpreter, server))
        except NotEligible as why:
            log.debug("%s: exec'd: %s", path, why)
            return self.fallback(path, env, stdout, stderr, cell)
        except (OSError, EOFError, ValueError) as exc:
            if server.alive():
                raise  # the server answered: the fork itself failed, as an exec can
            log.warning("fork server for %s failed (%s): %s is exec'd", script_plan.interpreter, exc, path)
            self._servers[script_plan.interpreter] = None
            return self.fallback(path, env, stdout, stderr, cell)
        if isinstance(child, StagedChild):
            self._stages.setdefault(script_plan.interpreter, []).append(child.stage)
        cell.started(child.pid)
        return child

    def _after(
        self, path: str, env: Mapping[str, str], interpreter: str, server: Server
    ) -> tuple[str, tuple[str, ...], str] | None:
        """The script after `path` in the chain, if the same server would take
        it: its stage sets it up while `path` runs (a guess: checked then)."""
        following = self._following.get(path)
        if following is None:
            return None
        found = plan(following, self.point, env, self.settings)
        if found is None or found.interpreter != interpreter or self._shadowed(following, server):
            return None
        return following, found.cmdline, found.comm

    def close(self) -> None:
        """The chain is done: reap the stages of its last hooks."""
        for interpreter, server in self._servers.items():
            if server is not None:
                server.reap_stages(self._stages.get(interpreter, ()), wait=0.5)

    def _server(self, interpreter: str) -> Server | None:
        if interpreter not in self._servers:
            served = servable(interpreter, self.settings)
            self._servers[interpreter] = SERVERS.get(interpreter, self.server_env()) if served else None
        return self._servers[interpreter]

    def _common(self, env: Mapping[str, str]) -> tuple[bytes, bool]:
        """The spec every script of the chain shares (the runner hands each
        the same environment), made once: marshalled, so that a stage can
        tell it is the one it prepared for by comparing bytes."""
        if self._chain is None or self._chain[0] is not env:
            context = chain_context()
            stdin = _valid(0)
            common = marshal.dumps({
                "cwd": context.cwd,
                "umask": context.umask,
                "rlimits": context.rlimits,
                "sigmask": sorted(int(number) for number in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                "env": [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in env.items()],
                "stdin": stdin,
            })  # fmt: skip
            self._chain = (env, common, stdin)
        return self._chain[1], self._chain[2]

    def _shadowed(self, path: str, server: Server) -> bool:
        """A module beside the script that the server has imported from
        elsewhere: the script would import its neighbour, the child the server's."""
        directory = self._directories.get(path)
        if directory is None:  # each script is asked about twice: as the next one, then as itself
            directory = self._directories[path] = os.path.dirname(os.path.realpath(path))
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
