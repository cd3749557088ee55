#!/usr/bin/env python3
"""Agent throughput: N VMs each created, paused, continued and destroyed,
concurrently, in three set-ups measured in the same run:

  libvirt     the same four calls straight on libvirt (test:///default) in a
              separate process: the floor, no agent, no hooks
  agent/none  through the agent's JSON-RPC API, no hooks installed
  agent/3sh   through the API, 3 shell hooks (`exit 0`) on each of the 8 points

Prints ops/s, p50/p99 latency per operation and the peak RSS of the process
doing the work (the agent, or the libvirt-direct worker).

    .venv/bin/python bench/agent.py [--sizes 10,100,500] [--clients 32]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from agentproc import AgentProcess, domain_xml  # noqa: E402

POINTS = (
    "before_vm_start", "after_vm_start", "before_vm_pause", "after_vm_pause",
    "before_vm_cont", "after_vm_cont", "before_vm_destroy", "after_vm_destroy",
)  # fmt: skip
OPERATIONS = ("VM.create", "VM.pause", "VM.cont", "VM.destroy")

DIRECT_WORKER = r"""
import json, sys, time, uuid, resource
from concurrent.futures import ThreadPoolExecutor
import libvirt
sys.path.insert(0, sys.argv[3])
from agentproc import domain_xml
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open("test:///default")
n, clients = int(sys.argv[1]), int(sys.argv[2])
def lifecycle(i):
    vm_id = str(uuid.uuid4())
    latencies = []
    t = time.perf_counter(); dom = conn.createXML(domain_xml(f"d-{vm_id[:8]}", vm_id), 0); latencies.append(time.perf_counter() - t)
    for call in (dom.suspend, dom.resume, dom.destroy):
        t = time.perf_counter(); call(); latencies.append(time.perf_counter() - t)
    return latencies
start = time.perf_counter()
with ThreadPoolExecutor(clients) as pool:
    results = list(pool.map(lifecycle, range(n)))
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "latencies": [x for r in results for x in r], "rss_mib": rss}))
"""


def run_direct(n: int, clients: int) -> dict:
    tests_dir = str(Path(__file__).resolve().parent.parent / "tests")
    out = subprocess.run(
        [sys.executable, "-c", DIRECT_WORKER, str(n), str(clients), tests_dir],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def noop_hooks(root: Path, hooks_per_point: int) -> Path:
    """A hooks root under `root` with that many `exit 0` shell hooks on each of POINTS."""
    os.chmod(root, 0o755)
    hooks = root / "hooks"
    hooks.mkdir(mode=0o755)
    for point in POINTS:
        for index in range(hooks_per_point):
            path = hooks / point / f"{index + 1}0_noop"
            path.parent.mkdir(mode=0o755, exist_ok=True)
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
    return hooks


def run_agent(n: int, clients: int, hooks_per_point: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="vmhooks-bench-"))
    try:
        hooks = noop_hooks(root, hooks_per_point)
        agent = AgentProcess(root / "agent", hooks, "test:///default", "--log-level", "WARNING").start()
        latencies: list[float] = []
        lock = threading.Lock()

        def lifecycle(_index: int) -> None:
            vm_id = str(uuid.uuid4())
            mine = []
            for method in OPERATIONS:
                params = {"xml": domain_xml(f"b-{vm_id[:8]}", vm_id)} if method == "VM.create" else {"vmId": vm_id}
                started = time.perf_counter()
                agent.call(method, **params)
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lifecycle, range(n)))
            wall = time.perf_counter() - start
            assert agent.proc is not None
            rss = peak_rss_mib(agent.proc.pid)
        finally:
            agent.stop()
        return {"wall": wall, "latencies": latencies, "rss_mib": rss}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,500", help="numbers of VMs (default 10,100,500)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent API clients (default 32)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"vmhooks agent benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{args.clients} concurrent clients, 4 operations per VM\n")  # fmt: skip
    header = f"{'setup':<11} {'VMs':>5} {'ops':>6} {'wall s':>8} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'vs libvirt':>10}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        results = {
            "libvirt": run_direct(n, args.clients),
            "agent/none": run_agent(n, args.clients, 0),
            "agent/3sh": run_agent(n, args.clients, 3),
        }
        base = len(results["libvirt"]["latencies"]) / results["libvirt"]["wall"]
        for name, result in results.items():
            lat = result["latencies"]
            ops_s = len(lat) / result["wall"]
            print(
                f"{name:<11} {n:>5} {len(lat):>6} {result['wall']:>8.2f} {ops_s:>8.0f} "
                f"{percentile(lat, 0.5) * 1000:>8.2f} {percentile(lat, 0.99) * 1000:>8.2f} "
                f"{result['rss_mib']:>8.1f} {ops_s / base:>9.3f}x"
            )
        print()
    spawn = statistics.median(_spawn_times(200))
    print(f"physical limit for hooks: one `sh -c 'exit 0'` spawn+wait = {spawn * 1000:.2f} ms; "
          f"3 hooks x 2 points per operation = {6 * spawn * 1000:.1f} ms of spawning per operation")  # fmt: skip
    return 0


def _spawn_times(count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "exit 0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    sys.exit(main())
