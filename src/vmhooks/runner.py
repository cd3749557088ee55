"""Running one hook point's chain of scripts.

The hot path: one private payload file for the whole chain, each script
spawned in its own process group, its stderr read (capped) until it exits,
a per-script timeout that kills the whole group, and a bounded wait for pipes
that background children keep open. Exit codes follow hook-points.md.
"""
from __future__ import annotations

import enum
import json
import math
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks import discovery, properties, validation
from vmhooks.environment import LOCK_TOKEN_VARIABLE, build_environment, validated
from vmhooks.execution import Cutoff, Limits, Outcome, Spawn, exec_spawn, execute
from vmhooks.forkserver import FastPathSettings, FastSpawn
from vmhooks.errors import HookError
from vmhooks.points import HookPoint, Payload, get_point

DEFAULT_TIMEOUT = 60.0
MAX_PAYLOAD_BYTES = 64 << 20  # a hook cannot make us read a file of any size


class Status(str, enum.Enum):
    OK = "ok"
    ERROR = "error"  # exit 1 (or >2, a signal, not executable): the chain goes on
    STOPPED_CHAIN = "stopped-chain"  # exit 2: later scripts do not run
    TIMEOUT = "timeout"  # killed at its deadline: stops the chain
    SIGNAL = "signal"  # killed by a signal: treated like exit 1
    REFUSED = "refused"  # unsafe file: nothing runs

    def __str__(self) -> str:
        return self.value


STOPS_CHAIN = frozenset({Status.STOPPED_CHAIN, Status.TIMEOUT, Status.REFUSED})


class RunnerConfig(NamedTuple):
    hooks_dir: Path
    timeout: float = DEFAULT_TIMEOUT  # seconds per script
    timeouts: Mapping[str, float] = {}  # "point" or "point/script" -> seconds
    allow_unsafe: bool = False  # development only: run group/other-writable scripts
    work_dir: Path | None = None  # where the private payload directories are made
    run_dir: Path | None = None  # given to hooks as _hook_rundir (launch flags)
    stderr_cap: int = 256 << 10  # bytes of stderr kept per script (head and tail)
    kill_grace: float = 2.0  # seconds between SIGTERM and SIGKILL
    drain_timeout: float = 0.5  # seconds to wait for stderr EOF after exit
    base_env: Mapping[str, str] | None = None  # default: os.environ
    property_rules: properties.PropertyRules | None = None  # None: values unchecked
    hooks_pythonpath: tuple[Path, ...] = ()  # appended to the hooks' PYTHONPATH (site modules)
    libvirt_uri: str | None = None  # the agent's, for vdsm.common.libvirtconnection in hooks
    agent_socket: Path | None = None  # the agent's API, for vdsm.client in hooks
    fast_path: FastPathSettings = FastPathSettings()  # Python hooks forked from a warm interpreter
    cutoff: Cutoff | None = None  # fired: running scripts are killed and later ones not started

    def hook_settings(self) -> dict[str, str]:
        """What hooks learn about the agent that runs them (VMHOOKS_* names
        cannot be set by custom properties or params)."""
        settings = {"VMHOOKS_HOOKS_DIR": os.path.abspath(self.hooks_dir)}
        if self.run_dir is not None:
            settings["_hook_rundir"] = str(self.run_dir)
        if self.libvirt_uri is not None:
            settings["VMHOOKS_LIBVIRT_URI"] = self.libvirt_uri
        if self.agent_socket is not None:
            settings["VMHOOKS_SOCKET"] = str(self.agent_socket)
        return settings

    def common_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """Every hook's environment before its chain adds its own variables:
        what a fork server starts with."""
        return {**build_environment(base, extra_pythonpath=self.hooks_pythonpath), **self.hook_settings()}

    def timeout_for(self, point: str, script: str, override: float | None) -> float:
        if override is not None:
            return override
        for key in (f"{point}/{script}", point):
            if key in self.timeouts:
                return self.timeouts[key]
        return self.timeout


class ScriptRun(NamedTuple):
    name: str
    status: Status
    rc: int | None  # exit code; -N when killed by signal N; None when it never ran
    duration_s: float
    stderr: str
    changed: bool  # the script changed the payload
    diff: str = ""  # unified diff of the payload, when changed
    note: str = ""  # why the status, in words (timeout, reserved code, ...)
    fast_path: bool = False  # forked by a fork server (a Python hook), not exec'd

    @property
    def failed(self) -> bool:
        return self.status is not Status.OK


class ChainResult(NamedTuple):
    point: HookPoint
    scripts: tuple[ScriptRun, ...]
    payload: Any  # what the caller acts on: the output if used and valid, else the input
    output_text: str  # what the chain left in the payload file (for reports)
    rejected: str | None  # why the output was refused, naming the script
    edits_discarded: bool  # scripts edited a payload whose output is not used
    warnings: tuple[str, ...] = ()  # e.g. custom properties no hook declares

    @property
    def failed(self) -> bool:
        return self.rejected is not None or any(run.failed for run in self.scripts)

    @property
    def aborts_operation(self) -> bool:
        failed_script = any(run.failed for run in self.scripts)
        return self.rejected is not None or (failed_script and self.point.aborts)

    @property
    def changed(self) -> bool:
        return any(run.changed for run in self.scripts)

    def error_message(self) -> str:
        """One line naming every failing script with its code and its own stderr."""
        parts = [describe_failure(run) for run in self.scripts if run.failed]
        if self.rejected:
            parts.append(self.rejected)
        return f"{self.point.name}: " + "; ".join(parts)

    def raise_if_aborting(self) -> None:
        if self.aborts_operation:
            raise HookError(self.error_message(), self)


def describe_failure(run: ScriptRun) -> str:
    why = run.note or f"exit {run.rc}"
    text = f"{run.name} failed ({why})"
    summary = stderr_summary(run.stderr)
    return f"{text}: {summary}" if summary else text


def stderr_summary(stderr: str, limit: int = 400) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " | ".join(lines[-3:])
    return text if len(text) <= limit else "..." + text[-limit:]


def run_chain(
    point_name: str,
    payload: Any,
    config: RunnerConfig,
    *,
    params: Mapping[str, object] | None = None,
    custom: Mapping[str, object] | None = None,
    vm_id: str | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    lock_token: str | None = None,
) -> ChainResult:
    """Run every script of `point_name` over `payload` and return what happened.

    Bad input (unknown point, bad property) raises before any script runs;
    script failures are in the result (`raise_if_aborting()` turns them into a
    HookError where the point aborts its operation). `deadline` (a
    `time.monotonic()` value) bounds the whole chain, for callers that must
    answer in time: each script's timeout is cut to what is left.
    `lock_token`: what the hooks show (VMHOOKS_LOCK_TOKEN) to act on the VM
    whose lock the caller holds and lends them (agent.registry).
    """
    point = get_point(point_name)
    params, custom = validated(params, "param"), validated(custom, "custom property")
    warnings: tuple[str, ...] = ()
    if config.property_rules is not None:
        warnings = properties.check(custom, config.property_rules, "custom property")
    scripts = discovery.find_scripts(config.hooks_dir, point.name)
    if not scripts:
        return ChainResult(point, (), payload, _text(encode_payload(point, payload)), None, False, warnings)
    base = os.environ if config.base_env is None else config.base_env
    env = build_environment(base, params, custom, vm_id, config.hooks_pythonpath)
    env.update(config.hook_settings())
    if lock_token is not None:
        env[LOCK_TOKEN_VARIABLE] = lock_token
    input_bytes = encode_payload(point, payload)
    if not config.allow_unsafe:
        refused = _refuse_unsafe(scripts)
        if refused:
            return ChainResult(point, refused, payload, _text(input_bytes), None, False, warnings)

    workdir = Path(tempfile.mkdtemp(prefix="vmhooks-", dir=config.work_dir))  # mode 0700
    path = workdir / ("payload.json" if point.payload is Payload.JSON else "payload.xml")
    devnull = -1
    fast: FastSpawn | None = None
    try:
        # The scripts' stdout: one /dev/null for the chain, not an open and a close per script.
        devnull = os.open(os.devnull, os.O_WRONLY)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(input_bytes)
        env["_hook_json" if point.payload is Payload.JSON else "_hook_domxml"] = str(path)
        spawn: Spawn = exec_spawn
        if config.fast_path.enabled:
            chain = [str(script.path) for script in scripts]
            spawn = fast = FastSpawn(point.name, config.fast_path, lambda: config.common_environment(base), exec_spawn,
                                     chain)  # fmt: skip
        runs, output, rejected = _run_scripts(
            point, scripts, path, input_bytes, env, config, timeout, devnull, spawn, deadline
        )
    finally:
        if fast is not None:
            fast.close()
        if devnull >= 0:
            os.close(devnull)
        try:  # two syscalls in the usual case; rmtree when a hook left files behind
            os.unlink(path)
            os.rmdir(workdir)
        except OSError:
            shutil.rmtree(workdir, ignore_errors=True)

    edited = any(run.changed for run in runs)
    if not point.output_used or rejected is not None or not edited:
        discarded = edited and not point.output_used
        return ChainResult(point, runs, payload, _text(output), rejected, discarded, warnings)
    return ChainResult(point, runs, decode_payload(point, output), _text(output), None, False, warnings)


def _run_scripts(
    point: HookPoint,
    scripts: list[discovery.Script],
    path: Path,
    current: bytes,
    env: dict[str, str],
    config: RunnerConfig,
    timeout: float | None,
    stdout: int,
    spawn: Spawn,
    deadline: float | None = None,
) -> tuple[tuple[ScriptRun, ...], bytes, str | None]:
    runs: list[ScriptRun] = []
    rejected: str | None = None
    problem = ""
    original = current
    for script in scripts:
        seconds = config.timeout_for(point.name, script.name, timeout)
        left = deadline - time.monotonic() if deadline is not None else math.inf
        if config.cutoff is not None and config.cutoff.fired:
            why = config.cutoff.reason
        elif left <= 0:  # the caller's time is up: later scripts do not start
            why = "the caller's deadline had passed"
        else:
            why = ""
        if why:
            runs.append(ScriptRun(script.name, Status.TIMEOUT, None, 0.0, "", False, "", f"not started: {why}"))
            break
        seconds = min(seconds, left)
        started = time.monotonic()
        limits = Limits(seconds, config.kill_grace, config.drain_timeout, config.stderr_cap)
        outcome = execute(str(script.path), env, limits, stdout, spawn, config.cutoff)
        duration = time.monotonic() - started
        after, read_problem = _read_payload(path)
        status, note = _classify(outcome, seconds)
        diff = validation.payload_diff(point, current, after, script.name) if after != current else ""
        changed = bool(diff)
        if changed and point.output_used:
            was = problem
            problem = read_problem or validation.output_problem(point, original, after)
            # The last script to change the payload decides: a later one may repair it.
            # A problem that an unrelated later edit carries along stays the fault
            # of the script that made it.
            if problem != was or rejected is None:
                rejected = f"output rejected: {script.name} {problem}" if problem else None
        if outcome.exec_error:
            note = outcome.exec_error
        runs.append(
            ScriptRun(script.name, status, outcome.rc, duration, outcome.stderr, changed, diff, note, outcome.fast_path)
        )
        current = after
        if status in STOPS_CHAIN:
            break
    return tuple(runs), current, rejected


def _refuse_unsafe(scripts: list[discovery.Script]) -> tuple[ScriptRun, ...]:
    refused = []
    seen: dict[str, discovery.Resolved] = {}  # the scripts share their directory
    for script in scripts:
        reason = discovery.unsafe_reason(script.path, seen=seen)
        if reason:
            note = f"refused: {reason}"
            refused.append(ScriptRun(script.name, Status.REFUSED, None, 0.0, "", False, "", note))
    return tuple(refused)


def _classify(outcome: Outcome, seconds: float) -> tuple[Status, str]:
    if outcome.cut:
        return Status.TIMEOUT, f"killed with every process it started: {outcome.cut}"
    if outcome.timed_out:
        return Status.TIMEOUT, f"timed out after {seconds:g}s, killed with every process it started"
    rc = outcome.rc
    if rc is None:
        return Status.ERROR, ""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return Status.SIGNAL, f"killed by {name}"
    if rc == 0:
        return Status.OK, ""
    if rc == 1:
        return Status.ERROR, ""
    if rc == 2:
        return Status.STOPPED_CHAIN, "exit 2, chain stopped"
    return Status.ERROR, f"exit {rc}, reserved code treated as 1"


def _read_payload(path: Path) -> tuple[bytes, str]:
    """The payload file's bytes, and a problem ('' when none)."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not block us at open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return b"", "removed the payload file"
    except OSError as exc:
        return b"", f"left a payload file that cannot be read ({exc.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"", "replaced the payload file with something that is not a regular file"
        data = _read_capped(fd, MAX_PAYLOAD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PAYLOAD_BYTES:
        return data[:MAX_PAYLOAD_BYTES], f"wrote more than {MAX_PAYLOAD_BYTES >> 20} MiB"
    return data, ""


def _read_capped(fd: int, limit: int) -> bytes:
    """At most `limit` bytes of `fd`, up to its end.

    Each read asks for what fstat says is left (+1, to meet the end in the same
    call), never for `limit` itself: read(64 MiB) allocates 64 MiB every time."""
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    total = 0
    while total < limit:
        want = min(max(size + 1 - total, 1 << 16), limit - total)
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total == size and len(chunk) < want:  # short read where fstat put the end
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_payload(point: HookPoint, payload: Any) -> bytes:
    if point.payload is Payload.JSON:
        return json.dumps(payload).encode("utf-8")
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return str(payload).encode("utf-8")


def decode_payload(point: HookPoint, data: bytes) -> Any:
    text = data.decode("utf-8")
    return json.loads(text) if point.payload is Payload.JSON else text


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
