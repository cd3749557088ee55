#!/usr/bin/env python3
"""Soak: N VMs, one after another, each created, paused, continued and
destroyed, and what the process holds before and after: RSS, file
descriptors, threads, zombie children, temp files. Bounded in time
(--max-seconds); Unix sockets only, libvirt's embedded test driver, no
network.

Two set-ups in the same run:

  libvirt  the same four calls straight on libvirt (test:///default) in a
           worker process: the floor, what libvirt itself keeps per VM
  agent    through the agent's JSON-RPC API on its Unix socket (one
           connection per call, as the CLI does), K shell hooks (`exit 0`)
           on each of the 8 points the cycle passes

"before" is taken after --warmup cycles (first-use caches, SQLite's page
cache, the allocator's arenas are not leaks); RSS is sampled every
--every cycles and its growth per cycle is the least-squares slope.

    .venv/bin/python bench/soak.py [--cycles 10000] [--hooks 2] [--max-seconds 1200]
    PYTHONPATH=/path/to/patched/src .venv/bin/python bench/soak.py   # soak a patched copy
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from agent import POINTS, noop_hooks  # noqa: E402 (bench/agent.py, beside this script)
from agentproc import AgentProcess, domain_xml  # noqa: E402

BUDGET_MIB = 5.0  # the goal: RSS flat within 5 MiB over 10,000 cycles
BUDGET_CYCLES = 10_000


def footprint(pid: int, run_dir: Path | None = None) -> dict[str, float]:
    """What process `pid` holds now, read from /proc."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    zombies = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            zombies += fields[0] == "Z" and int(fields[1]) == pid
    result = {
        "rss MiB": int(status["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "zombies": zombies,
    }
    if run_dir is not None:
        result["payload dirs"] = len(os.listdir(run_dir / "payloads"))
        result["launch flags"] = len(os.listdir(run_dir / "launch-flags"))
    return result


DIRECT_WORKER = r"""
import json, os, sys, time, uuid
import libvirt
sys.path.insert(0, sys.argv[4])
from agentproc import domain_xml
from soak import footprint
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open("test:///default")
cycles, warmup, every, max_seconds = (float(x) for x in sys.argv[1].split(","))
pid, samples, done, start = os.getpid(), [], 0, time.monotonic()
def cycle():
    vm_id = str(uuid.uuid4())
    dom = conn.createXML(domain_xml(f"s-{vm_id[:8]}", vm_id), 0)
    dom.suspend(); dom.resume(); dom.destroy()
for _ in range(int(warmup)):
    cycle()
before = footprint(pid)
while done < cycles and time.monotonic() - start < max_seconds:
    cycle()
    done += 1
    if done % every == 0:
        samples.append((done, footprint(pid)["rss MiB"]))
print(json.dumps({"before": before, "after": footprint(pid), "samples": samples, "cycles": done,
                  "seconds": time.monotonic() - start}))
"""


def run_direct(cycles: int, warmup: int, every: int, max_seconds: float) -> dict[str, Any]:
    bench_dir = Path(__file__).resolve().parent
    out = subprocess.run(
        [sys.executable, "-c", DIRECT_WORKER, f"{cycles},{warmup},{every},{max_seconds}", "", "",
         str(bench_dir.parent / "tests")],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": f"{bench_dir}:{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    return json.loads(out.stdout)


def run_agent(cycles: int, warmup: int, every: int, max_seconds: float, hooks_per_point: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="vmhooks-soak-"))
    try:
        hooks = noop_hooks(root, hooks_per_point)
        agent = AgentProcess(root / "agent", hooks, "test:///default", "--log-level", "WARNING").start()
        assert agent.proc is not None
        pid = agent.proc.pid

        def cycle() -> None:
            vm_id = str(uuid.uuid4())
            agent.call("VM.create", xml=domain_xml(f"s-{vm_id[:8]}", vm_id))
            for method in ("VM.pause", "VM.cont", "VM.destroy"):
                agent.call(method, vmId=vm_id)

        try:
            start = time.monotonic()
            for _ in range(warmup):
                cycle()
            before = footprint(pid, agent.run_dir)
            samples, done = [], 0
            while done < cycles and time.monotonic() - start < max_seconds:
                cycle()
                done += 1
                if done % every == 0:
                    samples.append((done, footprint(pid)["rss MiB"]))
            after = footprint(pid, agent.run_dir)
            seconds = time.monotonic() - start
            db_mib = sum(f.stat().st_size for f in agent.state_dir.glob("vmhooks.db*")) / 2**20
        finally:
            agent.stop()
        return {"before": before, "after": after, "samples": samples, "cycles": done, "seconds": seconds,
                "db MiB": db_mib}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def slope(samples: list[tuple[int, float]]) -> float:
    """Least-squares MiB per cycle."""
    if len(samples) < 2:
        return float("nan")
    n = len(samples)
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    var = sum((x - mean_x) ** 2 for x, _ in samples)
    return sum((x - mean_x) * (y - mean_y) for x, y in samples) / var if var else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000, help="cycles after the warm-up (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="cycles before 'before' (default 200)")
    parser.add_argument("--hooks", type=int, default=2, help="shell hooks on each point (default 2)")
    parser.add_argument("--every", type=int, default=0, help="RSS sample interval in cycles (default cycles/50)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per set-up, warm-up included (default 900)")
    args = parser.parse_args()
    every = args.every or max(1, args.cycles // 50)
    import vmhooks

    print(f"vmhooks soak: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, vmhooks from "
          f"{Path(vmhooks.__file__).parent}, {args.cycles} cycles (create/pause/cont/destroy) after "
          f"{args.warmup} warm-up, {args.hooks} sh hooks x {len(POINTS)} points\n")  # fmt: skip
    results = {
        "libvirt": run_direct(args.cycles, args.warmup, every, args.max_seconds),
        "agent": run_agent(args.cycles, args.warmup, every, args.max_seconds, args.hooks),
    }
    header = f"{'setup':<8} {'measure':<13} {'before':>9} {'after':>9} {'delta':>9}"
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        for key, before in result["before"].items():
            after = result["after"][key]
            fmt = ".1f" if isinstance(before, float) else ".0f"
            print(f"{name:<8} {key:<13} {before:>9{fmt}} {after:>9{fmt}} {after - before:>+9{fmt}}")
    print()
    header = f"{'setup':<8} {'cycles':>7} {'seconds':>8} {'cycles/s':>9} {'RSS B/cycle':>12} {'MiB per 10k':>12} {'vs budget':>10}"
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        per_cycle = slope(result["samples"]) * 2**20
        per_budget = per_cycle * BUDGET_CYCLES / 2**20
        print(f"{name:<8} {result['cycles']:>7} {result['seconds']:>8.1f} {result['cycles'] / result['seconds']:>9.1f} "
              f"{per_cycle:>12.0f} {per_budget:>12.2f} {per_budget / BUDGET_MIB:>9.2f}x")  # fmt: skip
    print()
    for name, result in results.items():
        samples = result["samples"][:: max(1, len(result["samples"]) // 10)]
        print(f"{name:<8} RSS MiB at cycle: " + "  ".join(f"{cycle}:{rss:.1f}" for cycle, rss in samples))
    own = (slope(results["agent"]["samples"]) - slope(results["libvirt"]["samples"])) * 2**20
    print(f"\nagent's own growth (agent - libvirt floor): {own:.0f} B/cycle = "
          f"{own * BUDGET_CYCLES / 2**20:.2f} MiB per {BUDGET_CYCLES} cycles (budget {BUDGET_MIB:g} MiB); "
          f"history database {results['agent']['db MiB']:.1f} MiB (pruned by age, not in RSS)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
