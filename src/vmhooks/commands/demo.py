"""`vmhooks demo`: the lifecycle of the seed's VM on libvirt's test driver,
with the seed's hooks, shown as a timeline of every hook run."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from vmhooks.client import Client, RpcError
from vmhooks.commands.common import table
from vmhooks.errors import VmhooksError

START_TIMEOUT = 15.0
# A one-line shell hook on each point the demo passes, so the timeline shows them all.
TRACED_POINTS = (
    "before_vdsm_start", "before_vm_start", "after_vm_start", "before_vm_pause", "after_vm_pause",
    "before_vm_cont", "after_vm_cont", "before_vm_hibernate", "after_vm_hibernate",
    "before_vm_dehibernate", "after_vm_dehibernate", "before_get_vm_stats", "after_get_vm_stats",
    "before_get_caps", "after_get_caps", "before_vm_destroy", "after_vm_destroy",
)  # fmt: skip
TRACE_HOOK = '#!/bin/sh\necho "trace: vmId=${vmId:-none} pincpu=${pincpu:-unset}" >&2\n'


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a VM through its lifecycle on libvirt's test driver, with hooks"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary hooks, state and history")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vmhooks-demo-"))
    os.chmod(workdir, 0o755)
    agent: subprocess.Popen[bytes] | None = None
    try:
        hooks = _install_demo_hooks(workdir / "hooks")
        state, socket_path = workdir / "state", workdir / "run" / "vmhooks.sock"
        print(f"hooks root: {hooks}")
        for point in sorted(os.listdir(hooks)):
            scripts = sorted(os.listdir(hooks / point))
            if scripts != ["10_trace"]:
                print(f"  {point}/{', '.join(scripts)}")
        print(f"  and 10_trace (a shell one-liner) on {len(TRACED_POINTS)} points")
        agent, client = _start_agent(workdir, hooks, state, socket_path)
        print(f"agent: pid {agent.pid} on test:///default, API on {socket_path}\n")
        _lifecycle(client)
        if args.keep:
            print(f"\nhistory: {state / 'vmhooks.db'} (SQLite; 'vmhooks history --state-dir {state}' reads it)")
        else:
            print("\nhistory: removed with the rest; 'vmhooks demo --keep' keeps it for 'vmhooks history'")
    except VmhooksError as exc:
        print(f"vmhooks demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if agent is not None:
            _stop_agent(agent, workdir)
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"cleaned up: {workdir}")
    return 0


def _install_demo_hooks(root: Path) -> Path:
    source = resources.files("vmhooks.demo") / "hooks"
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    for point_dir in source.iterdir():
        target = root / point_dir.name
        target.mkdir(parents=True, mode=0o755, exist_ok=True)
        for script in point_dir.iterdir():
            text = script.read_text().replace("#!/usr/bin/python3", f"#!{python}", 1)
            path = target / script.name
            path.write_text(text)
            path.chmod(0o755)
    for point in TRACED_POINTS:
        target = root / point
        target.mkdir(parents=True, mode=0o755, exist_ok=True)
        (target / "10_trace").write_text(TRACE_HOOK)
        (target / "10_trace").chmod(0o755)
    root.chmod(0o755)
    return root


def _start_agent(workdir: Path, hooks: Path, state: Path, socket_path: Path) -> tuple[subprocess.Popen[bytes], Client]:
    log = open(workdir / "agent.log", "wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "vmhooks.cli", "serve", "--libvirt-uri", "test:///default",
         "--hooks-dir", str(hooks), "--state-dir", str(state), "--run-dir", str(workdir / "run"),
         "--socket", str(socket_path), "--config", os.devnull, "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    client = Client(socket_path, timeout=60)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise VmhooksError(f"the agent exited ({agent.returncode}): {_tail(workdir / 'agent.log')}")
        try:
            client.call("VM.list")
            return agent, client
        except VmhooksError:
            time.sleep(0.05)
    raise VmhooksError(f"the agent did not answer within {START_TIMEOUT:g}s: {_tail(workdir / 'agent.log')}")


def _stop_agent(agent: subprocess.Popen[bytes], workdir: Path) -> None:
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=15)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        print(f"the agent did not stop in time: {_tail(workdir / 'agent.log')}", file=sys.stderr)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"


def _lifecycle(client: Client) -> None:
    xml = (resources.files("vmhooks.demo") / "seed-domain.xml").read_text()
    seen = _last_chain(client)
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("start myvm with pincpu=1-4", "VM.create", {"xml": xml, "custom": {"pincpu": "1-4"}}),
        ("pause", "VM.pause", {}),
        ("continue", "VM.cont", {}),
        ("hibernate", "VM.hibernate", {}),
        ("dehibernate", "VM.dehibernate", {}),
        ("VM stats", "VM.getStats", {}),
        ("host capabilities", "Host.getCapabilities", {}),
        ("destroy", "VM.destroy", {}),
    ]
    vm_id = None
    for title, method, params in steps:
        if method.startswith("VM.") and method != "VM.create":
            params = {**params, "vmId": vm_id}
        started = time.monotonic()
        try:
            result = client.call(method, **params)
        except RpcError as exc:
            print(f"== {title}: FAILED: {exc}")
            raise
        took = (time.monotonic() - started) * 1000
        status = result.get("status", "") if isinstance(result, dict) else ""
        print(f"== {title} ({method}, {took:.0f} ms){': ' + status if status else ''}")
        if method == "VM.create":
            vm_id = result["vmId"]
            live = client.call("VM.getXML", vmId=vm_id)
            vcpu = next((line.strip() for line in live.splitlines() if "<vcpu" in line), "?")
            print(f"   live XML in libvirt: {vcpu}")
        if method == "Host.getCapabilities":
            print(f"   caps.site = {result.get('site')!r} (added by after_get_caps/50_site)")
        seen = _print_runs(client, seen)


def _last_chain(client: Client) -> int:
    return max((chain["id"] for _, chain, _ in _runs(client, 20)), default=0)


def _runs(client: Client, limit: int) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(operation, chain, run) of the latest `limit` operations, oldest first."""
    page = client.call("Host.getHookHistory", limit=limit)
    return [(op, chain, run) for op in page["operations"] for chain in op["chains"] for run in chain["runs"]]


def _print_runs(client: Client, seen: int) -> int:
    runs = [(chain, run) for _, chain, run in _runs(client, 20) if chain["id"] > seen]
    if not runs:
        print("   (no hooks installed for these points)")
        return seen
    rows = [
        [chain["point"], run["script"], run["status"], run["rc"], f"{run['duration_s'] * 1000:.0f}", _change(chain, run)]
        for chain, run in runs
    ]
    print("   " + table(["POINT", "SCRIPT", "STATUS", "RC", "MS", "WHAT CHANGED"], rows).replace("\n", "\n   "))
    return max(chain["id"] for chain, _ in runs)


def _change(chain: dict[str, Any], run: dict[str, Any]) -> str:
    if chain["edits_discarded"] and run["changed"]:
        return "edits discarded (output not used here)"
    added = [line[1:].strip() for line in run["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
    if not added:
        return ""
    text = added[0] if len(added) == 1 else f"{added[0]} (+{len(added) - 1} more lines)"
    return text if len(text) <= 70 else text[:67] + "..."
