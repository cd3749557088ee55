"""`vdsm.common.commands`: running a command and collecting its output."""
from __future__ import annotations

from vdsm.common import cmdutils

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def execCmd(  # noqa: N802 (VDSM's name)
    command: Sequence[str],
    sudo: bool = False,
    cwd: str | None = None,
    data: bytes | None = None,
    raw: bool = False,
    printable: object = None,
    env: dict[str, str] | None = None,
    nice: int | None = None,
    ioclass: int | None = None,
    ioclassdata: int | None = None,
    setsid: bool = False,
    execCmdLogger: object = None,  # noqa: N803
    resetCpuAffinity: bool = True,  # noqa: N803
) -> tuple[int, object, object]:
    """Run `command` (wrapped as asked); (rc, out, err): lists of byte lines,
    or bytes when `raw`. A command that cannot start raises OSError."""
    import subprocess

    argv = cmdutils.wrap_command(
        command, with_ioclass=ioclass, ioclassdata=ioclassdata, with_nice=nice,
        with_setsid=setsid, with_sudo=sudo, reset_cpu_affinity=resetCpuAffinity,
    )  # fmt: skip
    if isinstance(data, str):
        data = data.encode("utf-8")
    # As on VDSM, the command's stdin is a pipe: it reads `data`, or an immediate EOF.
    stdin = subprocess.DEVNULL if data is None else None
    proc = subprocess.run(argv, input=data, stdin=stdin, cwd=cwd, env=env, capture_output=True)
    out, err = proc.stdout or b"", proc.stderr or b""
    if raw:
        return proc.returncode, out, err
    return proc.returncode, out.splitlines(), err.splitlines()


def run(
    args: Sequence[str],
    input: bytes | None = None,  # noqa: A002 (VDSM's name)
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    sudo: bool = False,
    setsid: bool = False,
    nice: int | None = None,
    ioclass: int | None = None,
    ioclassdata: int | None = None,
    reset_cpu_affinity: bool = True,
) -> bytes:
    """Run `args` and return its stdout; cmdutils.Error on a non-zero exit."""
    rc, out, err = execCmd(
        args, sudo=sudo, cwd=cwd, data=input, raw=True, env=env, nice=nice,
        ioclass=ioclass, ioclassdata=ioclassdata, setsid=setsid,
    )  # fmt: skip
    if rc != 0:
        raise cmdutils.Error(args, rc, out, err)
    return out  # type: ignore[return-value]
