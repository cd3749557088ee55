"""`vmhooks host caps|stats|all-vm-stats|hooks`: the host's reports."""
from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from vmhooks.commands.common import add_client_options, client, example, print_json, table
from vmhooks.commands.display import field_rows


class HostAction(NamedTuple):
    method: str
    help: str


HOST_ACTIONS = {
    "caps": HostAction("Host.getCapabilities", "capabilities, with the hooks inventory"),
    "stats": HostAction("Host.getStats", "host stats (after_get_stats applied)"),
    "all-vm-stats": HostAction("Host.getAllVmStats", "every VM's stats (after_get_all_vm_stats applied)"),
    "hooks": HostAction("Host.getHooks", "the agent's hooks inventory, with sha256"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("host", help="host capabilities, stats and hooks")
    actions = parser.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    for action, spec in HOST_ACTIONS.items():
        sub = actions.add_parser(
            action, help=spec.help, description=spec.help,
            **example(f"vmhooks host {action}", f"vmhooks host {action} --json"),
        )  # fmt: skip
        add_client_options(sub)
        sub.set_defaults(func=run, method=spec.method)


def run(args: argparse.Namespace) -> int:
    result = client(args).call(args.method)
    if args.json:
        print_json(result)
        return 0
    if args.method == "Host.getHooks":
        _print_hooks(result)
        return 0
    if isinstance(result, list):  # one report per VM
        print("\n\n".join(table(["FIELD", "VALUE"], field_rows(item)) for item in result) or "no VMs")
        return 0
    hooks = result.pop("hooks", None) if isinstance(result, dict) else None
    print(table(["FIELD", "VALUE"], field_rows(result)))
    if hooks is not None:
        print()
        _print_hooks(hooks)
    return 0


def _print_hooks(hooks: dict[str, dict[str, dict[str, str]]]) -> None:
    print("hooks:" if hooks else "hooks: none installed")
    for point, scripts in sorted(hooks.items()):
        for script, info in sorted(scripts.items()):
            print(f"  {point}/{script}  sha256:{info['checksum'][:16]}")
