"""`vmhooks vm ACTION`: drive the agent's VMs (VM = UUID or name)."""
from __future__ import annotations

import argparse
import uuid
from typing import Any

from vmhooks.client import Client
from vmhooks.commands.common import add_client_options, client, field_rows, match_vm, name_values, print_json, read_input, table
from vmhooks.errors import UsageError

# action -> (API method, help): the actions that take just a VM.
VM_ACTIONS = {
    "destroy": ("VM.destroy", "stop the VM (before/after_vm_destroy)"),
    "pause": ("VM.pause", "pause the VM"),
    "cont": ("VM.cont", "continue a paused VM"),
    "hibernate": ("VM.hibernate", "save the VM's memory to a file and stop it"),
    "dehibernate": ("VM.dehibernate", "restore a hibernated VM"),
    "stats": ("VM.getStats", "the VM's stats (after_get_vm_stats applied)"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("vm", help="create, list and operate the agent's VMs")
    actions = parser.add_subparsers(dest="vm_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="start a VM from a domain XML file")
    create.add_argument("xml", metavar="FILE.xml", help="domain XML ('-' for stdin)")
    create.add_argument("--prop", action="append", metavar="NAME=VALUE", help="VM custom property")
    create.add_argument(
        "--device-prop", action="append", metavar="DEVICE:NAME=VALUE",
        help="device custom property; DEVICE is its alias, MAC or target dev",
    )  # fmt: skip
    create.add_argument("--paused", action="store_true", help="start paused (launch flags)")
    create.add_argument("--vm-id", help="vmId (default: the XML's <uuid>)")
    add_client_options(create)
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="the agent's VMs")
    add_client_options(listing)
    listing.set_defaults(func=run_list)

    migrate = actions.add_parser("migrate", help="live-migrate a VM to another agent")
    migrate.add_argument("vm", metavar="VM", help="UUID or name")
    migrate.add_argument("--to", required=True, metavar="HOST:PORT", help="the destination agent's --listen address")
    add_client_options(migrate)
    migrate.set_defaults(func=run_migrate)

    for action, (_method, help_text) in VM_ACTIONS.items():
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("vm", metavar="VM", help="UUID or name")
        add_client_options(sub)
        sub.set_defaults(func=run_action, action=action)


def resolve(agent: Client, vm: str) -> str:
    """A VM's UUID from its UUID, its name or a unique UUID prefix."""
    try:
        return str(uuid.UUID(vm))
    except ValueError:
        pass
    return match_vm(vm, ((item["vmId"], item["name"]) for item in agent.call("VM.list")))


def run_create(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"xml": read_input(args.xml, "domain XML"), "launchPaused": args.paused}
    if args.prop:
        params["custom"] = name_values(args.prop, "--prop")
    if args.device_prop:
        params["deviceCustom"] = _device_props(args.device_prop)
    if args.vm_id:
        params["vmId"] = args.vm_id
    result = client(args).call("VM.create", **params)
    _show(args, result)
    return 0


def _device_props(pairs: list[str]) -> dict[str, dict[str, str]]:
    devices: dict[str, dict[str, str]] = {}
    for pair in pairs:
        device, sep, assignment = pair.partition(":")
        if not sep or not device:
            raise UsageError(f"--device-prop {pair!r}: expected DEVICE:NAME=VALUE")
        devices.setdefault(device, {}).update(name_values([assignment], "--device-prop"))
    return devices


def run_list(args: argparse.Namespace) -> int:
    vms = client(args).call("VM.list")
    if args.json:
        print_json(vms)
    elif not vms:
        print("no VMs")
    else:
        rows = [[vm["name"], vm["vmId"], vm["status"], _props(vm["custom"])] for vm in vms]
        print(table(["NAME", "VM ID", "STATUS", "CUSTOM PROPERTIES"], rows))
    return 0


def run_action(args: argparse.Namespace) -> int:
    agent = client(args)
    method, _ = VM_ACTIONS[args.action]
    result = agent.call(method, vmId=resolve(agent, args.vm))
    if args.action == "stats" and not args.json:
        for stats in result["statsList"]:
            print(table(["FIELD", "VALUE"], field_rows(stats)))
        return 0
    _show(args, result)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    agent = client(args)
    result = agent.call("VM.migrate", vmId=resolve(agent, args.vm), dst=args.to)
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']} ({result['vmId']}): migrated to {result['destination']}"
              f" ({result.get('destinationStatus') or 'status unknown'} there)")  # fmt: skip
    return 0


def _show(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']} ({result['vmId']}): {result['status']}")


def _props(custom: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(custom.items())) or "-"
