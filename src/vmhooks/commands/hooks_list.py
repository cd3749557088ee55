"""`vmhooks hooks list`: the inventory of installed scripts with checksums."""
from __future__ import annotations

import argparse
import json
from typing import Any

from vmhooks.commands.common import add_hooks_dir, add_json_option, example, existing_hooks_dir
from vmhooks.discovery import inventory


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "list",
        help="installed scripts per point, with sha256",
        **example("vmhooks hooks list --hooks-dir /usr/libexec/vdsm/hooks", "vmhooks hooks list --json"),
    )
    add_hooks_dir(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = existing_hooks_dir(args)
    found = inventory(root)
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    if not found:
        print(f"no hook scripts under {root}")
        return 0
    for point, scripts in found.items():
        print(point)
        for name, info in scripts.items():
            print(f"  {name:<40} sha256:{info['checksum'][:16] or '(unreadable)'}")
    return 0
