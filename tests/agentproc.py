"""A real agent process (`vmhooks serve`) for black-box tests, and hooks that
record the order in which points ran."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmhooks.client import Client
from vmhooks.errors import VmhooksError

VMHOOKS = [sys.executable, "-m", "vmhooks.cli"]


class AgentProcess:
    """`vmhooks serve` on its own state, run dir and socket under `root`.

    `prefix` goes in front of the command, e.g. a NetNamespace's
    command_prefix() to run the agent in a network namespace (the test
    still reaches it on its Unix socket)."""

    def __init__(
        self, root: Path, hooks_dir: Path, uri: str = "test:///default", *extra: str, prefix: Sequence[str] = ()
    ) -> None:
        self.root = root
        self.hooks_dir = hooks_dir
        self.uri = uri
        self.extra = extra
        self.prefix = tuple(prefix)
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.socket = self.run_dir / "vmhooks.sock"
        self.log_path = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket, timeout=120)

    def command(self) -> list[str]:
        return [
            *self.prefix, *VMHOOKS, "serve", "--libvirt-uri", self.uri, "--hooks-dir", str(self.hooks_dir),
            "--state-dir", str(self.state_dir), "--run-dir", str(self.run_dir),
            "--config", os.devnull, "--log-level", "DEBUG", *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> AgentProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.client.call("VM.list")
                return self
            except VmhooksError:
                time.sleep(0.05)
        raise RuntimeError(f"agent did not answer within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the agent dumps every thread's stack
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop within {timeout}s:\n{self.log()}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, **params)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def trace_hooks(hooks_dir: Path, points: list[str], log_file: Path) -> None:
    """A `05_trace` shell hook on each point that appends `<point> <vmId>` to log_file."""
    for point in points:
        directory = hooks_dir / point
        directory.mkdir(mode=0o755, exist_ok=True)
        script = directory / "05_trace"
        script.write_text(f'#!/bin/sh\necho "{point} ${{vmId:-}}" >> "{log_file}"\n')
        script.chmod(0o755)


def traced(log_file: Path, vm_id: str | None = None) -> list[str]:
    """The points recorded by trace hooks, in order (only this VM's, if given)."""
    if not log_file.exists():
        return []
    points = []
    for line in log_file.read_text().splitlines():
        point, _, vm = line.partition(" ")
        if vm_id is None or vm == vm_id:
            points.append(point)
    return points


def domain_xml(name: str, uuid: str, memory_kib: int = 65536) -> str:
    """A small domain the test driver accepts, with one NIC and one disk."""
    return f"""<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{memory_kib}</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/images/{name}.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <graphics type='vnc' port='-1' autoport='yes'/>
  </devices>
</domain>
"""


def hook_runs(page: dict[str, Any]) -> list[dict[str, Any]]:
    """A history page (Host.getHookHistory) as one row per script run, oldest
    first, each with its chain's and its operation's facts."""
    rows = []
    for operation in page["operations"]:
        for chain in operation["chains"]:
            facts = {key: value for key, value in chain.items() if key not in ("id", "runs")}
            for run in chain["runs"]:
                rows.append({**facts, **run, "chain": chain["id"], "vm_id": operation["vm_id"],
                             "operation_id": operation["id"], "result": operation["result"]})  # fmt: skip
    return rows


def whole_history(fetch: Callable[..., dict[str, Any]], **filters: Any) -> list[dict[str, Any]]:
    """Every operation, page after page: `fetch(before=..., **filters)` is
    Host.getHookHistory or Agent.history."""
    operations: list[dict[str, Any]] = []
    before = None
    while True:
        page = fetch(**filters, **({"before": before} if before else {}))
        operations[:0] = page["operations"]
        before = page["before"]
        if before is None:
            return operations
