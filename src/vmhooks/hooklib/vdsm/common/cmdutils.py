"""`vdsm.common.cmdutils`: finding and wrapping the commands VDSM runs."""
from __future__ import annotations

import errno
import os

from vdsm.common import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

OUT = "out"
ERR = "err"


class CommandPath:
    """A program known by its usual paths: `cmd` is the first that exists,
    else the name found on PATH (unless `search_path=False`); OSError ENOENT
    when none. Looked up on first use and remembered."""

    def __init__(self, name: str, *paths: str, **kwargs: object) -> None:
        self.name = name
        self.paths = paths
        self._cmd: str | None = None
        self._search_path = kwargs.get("search_path", True)

    @property
    def cmd(self) -> str:
        if not self._cmd:
            for path in self.paths:
                if os.path.exists(path):
                    self._cmd = path
                    break
            else:
                if self._search_path:
                    import shutil

                    self._cmd = shutil.which(self.name)
                if self._cmd is None:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT) + ": " + self.name)
        return self._cmd

    def __repr__(self) -> str:
        return str(self.cmd)

    def __str__(self) -> str:
        return str(self.cmd)


class Error(errors.Base):
    """A command that exited with a non-zero code."""

    msg = "Command {self.cmd} failed with rc={self.rc} out={self.out!r} err={self.err!r}"

    def __init__(self, cmd: object, rc: int, out: object, err: object) -> None:
        self.cmd = cmd
        self.rc = rc
        self.out = out
        self.err = err


class TimeoutExpired(errors.Base):
    msg = "Timeout waiting for process pid={self.pid}"

    def __init__(self, pid: int) -> None:
        self.pid = pid


def command_log_line(args: Sequence[object], cwd: str | None = None) -> str:
    import shlex

    where = f" (cwd {cwd})" if cwd else ""
    return f"{' '.join(shlex.quote(str(arg)) for arg in args)}{where}"


def retcode_log_line(code: int, err: bytes | None = None) -> str:
    result = "SUCCESS" if code == 0 else "FAILED"
    return f"{result}: <err> = {err!r}; <rc> = {code!r}"


def exec_cmd(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run `cmd`; (rc, out, err) as bytes."""
    import subprocess

    proc = subprocess.run(list(cmd), env=env, stdin=subprocess.DEVNULL, capture_output=True)
    return proc.returncode, proc.stdout, proc.stderr


def sudo(cmd: Sequence[str]) -> list[str]:
    """`cmd` through `sudo -n`, unless this process is root already."""
    if os.geteuid() == 0:
        return list(cmd)
    from vdsm.common import constants

    return [constants.EXT_SUDO, "-n", *cmd]


def nice(cmd: Sequence[str], value: int) -> list[str]:
    from vdsm.common import constants

    return [constants.EXT_NICE, "-n", str(value), *cmd]


def ionice(cmd: Sequence[str], ioclass: int, ioclassdata: int | None = None) -> list[str]:
    from vdsm.common import constants

    data = [] if ioclassdata is None else ["-n", str(ioclassdata)]
    return [constants.EXT_IONICE, "-c", str(ioclass), *data, *cmd]


def setsid(cmd: Sequence[str]) -> list[str]:
    from vdsm.common import constants

    return [constants.EXT_SETSID, *cmd]


def taskset(cmd: Sequence[str], cpu_list: Sequence[str]) -> list[str]:
    from vdsm.common import constants

    return [constants.EXT_TASKSET, "--cpu-list", ",".join(cpu_list), *cmd]


def prlimit(cmd: Sequence[str], cpu_time: int | None = None, address_space: int | None = None) -> list[str]:
    from vdsm.common import constants

    limits = [] if cpu_time is None else [f"--cpu={cpu_time}"]
    limits += [] if address_space is None else [f"--as={address_space}"]
    return [constants.EXT_PRLIMIT, *limits, *cmd]


def wrap_command(
    command: Sequence[str],
    with_ioclass: int | None = None,
    ioclassdata: int | None = None,
    with_nice: int | None = None,
    with_setsid: bool = False,
    with_sudo: bool = False,
    reset_cpu_affinity: bool = True,
) -> list[str]:
    """`command` run under ionice, nice, setsid and sudo as asked. The CPU
    affinity is left as inherited: a hook has no pinned agent to undo."""
    cmd = list(command)
    if with_ioclass is not None:
        cmd = ionice(cmd, with_ioclass, ioclassdata)
    if with_nice is not None:
        cmd = nice(cmd, with_nice)
    if with_setsid:
        cmd = setsid(cmd)
    if with_sudo:
        cmd = sudo(cmd)
    return cmd
