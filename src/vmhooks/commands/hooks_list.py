"""`vmhooks hooks list`: the inventory of installed scripts with checksums."""
from __future__ import annotations

import argparse
import json
from typing import Any

from vmhooks.commands.common import add_hooks_dir, hooks_dir
from vmhooks.discovery import inventory


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("list", help="installed scripts per point, with sha256")
    add_hooks_dir(parser)
    parser.add_argument("--json", action="store_true", help="the inventory as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = inventory(hooks_dir(args))
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    if not found:
        print(f"no hook scripts under {hooks_dir(args)}")
        return 0
    for point, scripts in found.items():
        print(point)
        for name, info in scripts.items():
            print(f"  {name:<40} sha256:{info['checksum'][:16] or '(unreadable)'}")
    return 0
