"""`vdsm.storage.qemuimg`: qemu-img, as VDSM runs it.

`info()` is `qemu-img info --output json` parsed (a dict; a list with
`backing_chain`), `check()` answers `{"offset": image-end-offset}` (leaked
clusters, exit 3, are not an error), `convert()` returns an operation whose
`run()` copies. A non-zero exit raises cmdutils.Error; output that is not
what qemu-img should print raises InvalidOutput.
"""
from __future__ import annotations

import os

from vdsm.common import cmdutils
from vdsm.common.units import GiB

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_qemuimg = cmdutils.CommandPath("qemu-img", "/usr/bin/qemu-img", "/usr/local/bin/qemu-img")


class FORMAT:
    QCOW2 = "qcow2"
    QCOW = "qcow"
    QED = "qed"
    RAW = "raw"
    VMDK = "vmdk"


class PREALLOCATION:
    OFF = "off"
    METADATA = "metadata"
    FALLOC = "falloc"
    FULL = "full"


_QCOW2_COMPAT_SUPPORTED = ("0.10", "1.1")


def supports_compat(compat: str) -> bool:
    return compat in _QCOW2_COMPAT_SUPPORTED


def default_qcow2_compat() -> str:
    return "1.1"


class InvalidOutput(cmdutils.Error):
    msg = "Commmand {self.cmd} returned invalid output: {self.out}: {self.reason}"

    def __init__(self, cmd: object, out: object, reason: str) -> None:
        self.cmd = cmd
        self.out = out
        self.reason = reason


def _run_cmd(cmd: list[str], cwd: str | None = None) -> bytes:
    from vdsm.common import commands

    rc, out, err = commands.execCmd(cmd, raw=True, cwd=cwd)
    if rc != 0:
        raise cmdutils.Error(cmd, rc, out, err)
    return out  # type: ignore[return-value]


def _parse_json(output: bytes, expected_type: type = dict) -> Any:
    import json

    value = json.loads(output.decode("utf8"))
    if not isinstance(value, expected_type):
        raise ValueError(f"Not a {expected_type.__name__}")
    return value


def info(
    image: str, format: str | None = None, unsafe: bool = False, trusted_image: bool = True,  # noqa: A002
    backing_chain: bool = False,
) -> Any:  # fmt: skip
    cmd = [_qemuimg.cmd, "info", "--output", "json"]
    if format:
        cmd += ["-f", format]
    if unsafe:
        cmd.append("-U")
    if backing_chain:
        cmd.append("--backing-chain")
    cmd.append(image)
    if not trusted_image:
        # qemu-img's parsers are not hardened against hostile images: bound them.
        cmd = cmdutils.prlimit(cmd, cpu_time=30, address_space=GiB)
    out = _run_cmd(cmd)
    try:
        result = _parse_json(out, list if backing_chain else dict)
    except ValueError as exc:
        raise InvalidOutput(cmd, out, f"Failed to process qemu-img output: {exc}") from None
    for node in result if backing_chain else [result]:
        for key in ("virtual-size", "format"):
            if key not in node:
                raise InvalidOutput(cmd, out, f"Missing field: {key!r}")
    return result


def check(image: str, format: str | None = None) -> dict[str, int]:  # noqa: A002
    cmd = [_qemuimg.cmd, "check", "--output", "json"]
    if format:
        cmd += ["-f", format]
    cmd.append(image)
    try:
        out = _run_cmd(cmd)
    except cmdutils.Error as exc:
        if exc.rc != 3:  # 3: leaked clusters, wasted space but no harm
            raise
        out = exc.out  # type: ignore[assignment]
    try:
        result = _parse_json(out)
    except ValueError:
        raise InvalidOutput(cmd, out, "Failed to process qemu-img output") from None
    try:
        return {"offset": result["image-end-offset"]}
    except KeyError:
        raise InvalidOutput(cmd, out, "unable to parse qemu-img check output") from None


class ProgressCommand:
    """A qemu-img command run by `run()`; `progress` (0-100) as it goes."""

    def __init__(self, cmd: list[str], cwd: str | None = None) -> None:
        self.cmd = cmd
        self.cwd = cwd
        self._progress = 0.0

    def run(self) -> None:
        import re

        out = _run_cmd(self.cmd, self.cwd)
        found = re.findall(rb"\(([\d.]+)/100%\)", out)
        self._progress = float(found[-1]) if found else 100.0

    @property
    def progress(self) -> float:
        return self._progress


def convert(
    srcImage: str, dstImage: str, srcFormat: str | None = None, dstFormat: str | None = None,  # noqa: N803
    dstQcow2Compat: str | None = None, backing: str | None = None, backingFormat: str | None = None,  # noqa: N803
    preallocation: str | None = None, compressed: bool = False, unordered_writes: bool = False,
    create: bool = True, bitmaps: bool = False, target_is_zero: bool = False,
) -> ProgressCommand:  # fmt: skip
    cmd = [_qemuimg.cmd, "convert", "-p", "-t", "none", "-T", "none"]
    options = []
    cwd = None
    if srcFormat:
        cmd += ["-f", srcFormat]
    if dstFormat:
        cmd += ["-O", dstFormat]
        if create and dstFormat == FORMAT.QCOW2:
            compat = dstQcow2Compat or default_qcow2_compat()
            if not supports_compat(compat):
                raise ValueError(f"Invalid compat version {compat!r}")
            options.append("compat=" + compat)
        if create and preallocation:
            if preallocation not in (PREALLOCATION.OFF, PREALLOCATION.FALLOC, PREALLOCATION.FULL, PREALLOCATION.METADATA):
                raise ValueError(f"Invalid preallocation type {preallocation!r}")
            options.append("preallocation=" + preallocation)
    if backing:
        if not os.path.isabs(backing):
            cwd = os.path.dirname(srcImage)
        if create:
            options.append(f"backing_file={backing}")
            if backingFormat:
                options.append(f"backing_fmt={backingFormat}")
        else:
            cmd += ["-B", backing]
    if create:
        if options:
            cmd += ["-o", ",".join(options)]
    else:
        cmd.append("-n")
        if backing is None and target_is_zero:
            cmd.append("--target-is-zero")
    if compressed:
        cmd.append("-c")
    if unordered_writes:
        cmd.append("-W")
    if bitmaps:
        cmd += ["--bitmaps", "--skip-broken-bitmaps"]
    cmd += [srcImage, dstImage]
    return ProgressCommand(cmd, cwd=cwd)


def create(
    image: str, size: int | None = None, format: str | None = None, qcow2Compat: str | None = None,  # noqa: A002,N803
    backing: str | None = None, backingFormat: str | None = None, preallocation: str | None = None,  # noqa: N803
    unsafe: bool = False,
) -> None:  # fmt: skip
    cmd = [_qemuimg.cmd, "create"]
    options = []
    if format:
        cmd += ["-f", format]
        if format == FORMAT.QCOW2:
            options.append("compat=" + (qcow2Compat or default_qcow2_compat()))
    if backing:
        options.append(f"backing_file={backing}")
        if backingFormat:
            options.append(f"backing_fmt={backingFormat}")
    if preallocation:
        options.append("preallocation=" + preallocation)
    if options:
        cmd += ["-o", ",".join(options)]
    if unsafe:
        cmd.append("-u")
    cmd.append(image)
    if size is not None:
        cmd.append(str(size))
    _run_cmd(cmd)


def resize(image: str, newSize: int, format: str | None = None) -> None:  # noqa: A002,N803
    cmd = [_qemuimg.cmd, "resize"] + (["-f", format] if format else []) + [image, str(newSize)]
    _run_cmd(cmd)
