"""`vmhooks history`: what hooks ran, when, and what they did."""
from __future__ import annotations

import argparse
import time
from typing import Any

from vmhooks.commands.common import add_client_options, client, print_json, table
from vmhooks.commands.vm import resolve


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("history", help="the record of every hook run")
    parser.add_argument("--vm", help="only this VM (UUID or name)")
    parser.add_argument("--point", help="only this hook point")
    parser.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    parser.add_argument("--diff", action="store_true", help="show each run's payload diff")
    add_client_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    agent = client(args)
    params: dict[str, Any] = {"limit": args.limit}
    if args.vm:
        params["vmId"] = resolve(agent, args.vm)
    if args.point:
        params["point"] = args.point
    runs = agent.call("Host.getHookHistory", **params)
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print("no hook runs recorded")
        return 0
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["time"])),
            (run["vm_id"] or "host")[:8],
            run["point"],
            run["script"] or "-",
            run["status"] or "-",
            "-" if run["rc"] is None else run["rc"],
            "-" if run["duration_s"] is None else f"{run['duration_s'] * 1000:.0f}",
            "yes" if run["changed"] else "",
        ]
        for run in runs
    ]
    print(table(["TIME", "VM", "POINT", "SCRIPT", "STATUS", "RC", "MS", "CHANGED"], rows))
    for run in runs:
        if args.diff and run["diff"]:
            print(f"\n--- {run['point']}/{run['script']}:\n{run['diff'].rstrip()}")
    return 0
