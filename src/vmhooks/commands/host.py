"""`vmhooks host caps|stats`: the host's capabilities and stats."""
from __future__ import annotations

import argparse
from typing import Any

from vmhooks.commands.common import add_client_options, client, field_rows, print_json, table

HOST_ACTIONS = {
    "caps": ("Host.getCapabilities", "capabilities, with the hooks inventory"),
    "stats": ("Host.getStats", "host stats"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("host", help="host capabilities and stats")
    actions = parser.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    for action, (method, help_text) in HOST_ACTIONS.items():
        sub = actions.add_parser(action, help=help_text)
        add_client_options(sub)
        sub.set_defaults(func=run, method=method)


def run(args: argparse.Namespace) -> int:
    result = client(args).call(args.method)
    if args.json:
        print_json(result)
        return 0
    hooks = result.pop("hooks", None) if isinstance(result, dict) else None
    rows = field_rows(result) if isinstance(result, dict) else []
    print(table(["FIELD", "VALUE"], rows))
    if hooks is not None:
        print("\nhooks:" if hooks else "\nhooks: none installed")
        for point, scripts in sorted(hooks.items()):
            for script, info in sorted(scripts.items()):
                print(f"  {point}/{script}  sha256:{info['checksum'][:16]}")
    return 0
