#!/usr/bin/env python3
"""Benchmark: what the KubeVirt sidecar adds to a hook chain, against the
physical limit measured in the same run.

    .venv/bin/python bench/kubevirt.py [--repeat R] [--sizes 0,1,10]

For N no-op shell hooks at before_vm_start it times

  sidecar  one OnDefineDomain call over gRPC on the sidecar's Unix socket (a
           real `vmhooks kubevirt-sidecar` process), with the KubeVirt-shaped
           domain XML and VMI of the tests, and
  limit    what no sidecar can avoid: `run_chain("before_vm_start")` of the
           same N scripts in this process, plus one gRPC round trip to the
           same socket (Info) for the transport.

Pairs alternate their order so that drift hits both sides alike; the ratio
is the median of the per-pair ratios. See bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the virt-launcher client of the tests
from sidecarproc import DOMAIN_XML, SidecarProcess, vmi_json  # noqa: E402

from vmhooks.runner import RunnerConfig, run_chain  # noqa: E402

PLAIN_VMI = vmi_json(drop=("vmhooks.io/custom", "vmhooks.io/deviceCustom"))
UID = "9b2c1f4e-3a6d-4e8b-9c1d-2f3e4a5b6c7d"


def hooks_tree(root: Path, n: int) -> Path:
    tree = root / f"hooks-{n}"
    (tree / "before_vm_start").mkdir(parents=True)
    for directory in (tree, tree / "before_vm_start"):
        os.chmod(directory, 0o755)
    for i in range(n):
        script = tree / "before_vm_start" / f"{i:02d}_noop"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    return tree


def measure(n: int, repeat: int, root: Path) -> dict[str, float]:
    tree = hooks_tree(root, n)
    process = SidecarProcess(root / f"pod-{n}", tree).start()
    launcher = process.launcher()
    config = RunnerConfig(tree)
    xml = DOMAIN_XML.decode()

    def sidecar() -> float:
        started = time.perf_counter()
        launcher.on_define_domain(vmi=PLAIN_VMI)
        return time.perf_counter() - started

    def limit() -> float:
        started = time.perf_counter()
        run_chain("before_vm_start", xml, config, vm_id=UID)
        launcher.info()
        return time.perf_counter() - started

    pairs = []
    try:
        sidecar(), limit()  # warm-up
        for i in range(repeat):
            if i % 2:
                b = limit()
                a = sidecar()
            else:
                a = sidecar()
                b = limit()
            pairs.append((a, b))
    finally:
        launcher.close()
        process.stop()
    sides, limits = [a for a, _ in pairs], [b for _, b in pairs]
    return {
        "sidecar": statistics.median(sides),
        "limit": statistics.median(limits),
        "extra_ms": statistics.median(a - b for a, b in pairs) * 1000,
        "ratio": statistics.median(a / b for a, b in pairs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=31, help="timed pairs per size (default 31)")
    parser.add_argument("--sizes", default="0,1,10", help="chain lengths N (default 0,1,10)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"KubeVirt sidecar: OnDefineDomain over gRPC vs run_chain + one gRPC round trip, {args.repeat} pairs")
    print(f"{'N':>3}  {'sidecar med ms':>14}  {'limit med ms':>12}  {'extra ms':>8}  {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="vmhooks-bench-kubevirt-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        for n in sizes:
            row = measure(n, args.repeat, root)
            print(
                f"{n:>3}  {row['sidecar'] * 1000:>14.2f}  {row['limit'] * 1000:>12.2f}  "
                f"{row['extra_ms']:>8.2f}  {row['ratio']:>6.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
