"""`vmhooks vm ACTION`: drive the agent's VMs. Wherever a VM is named, it
may be its UUID, its name or a unique UUID prefix (8 characters or more).

The actions are tables where they share a shape: VM_ACTIONS take just a
VM; `vm_devices.DEVICE_ACTIONS` take a VM and a device XML."""
from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from vmhooks.commands import vm_devices
from vmhooks.commands.common import (
    add_client_options,
    client,
    device_values,
    example,
    name_values,
    print_json,
    read_input,
    resolve_vm,
    show_vm,
    table,
)
from vmhooks.commands.display import field_rows

VM_HELP = "the VM: its UUID, its name, or a unique UUID prefix"
DEVICE_PROP_HELP = (
    "a device custom property (repeatable). DEVICE is the device's MAC address, its target dev "
    "(vda) or its alias, which must be in the XML (<alias name='ua-net0'/>); "
    "e.g. 52:54:00:12:34:56:extnet=ovirtmgmt"
)


class VmAction(NamedTuple):
    """An action that takes a VM and nothing else."""

    method: str
    help: str
    example: str


VM_ACTIONS: dict[str, VmAction] = {
    "destroy": VmAction("VM.destroy", "stop the VM (before/after_vm_destroy)", "vmhooks vm destroy myvm"),
    "pause": VmAction("VM.pause", "pause the VM", "vmhooks vm pause myvm"),
    "cont": VmAction("VM.cont", "continue a paused VM", "vmhooks vm cont 3573e29e"),
    "hibernate": VmAction("VM.hibernate", "save the VM's memory to a file and stop it", "vmhooks vm hibernate myvm"),
    "dehibernate": VmAction("VM.dehibernate", "restore a hibernated VM", "vmhooks vm dehibernate myvm"),
    "stats": VmAction("VM.getStats", "the VM's stats (after_get_vm_stats applied)", "vmhooks vm stats myvm --json"),
    "xml": VmAction("VM.getXML", "the VM's live domain XML (the last one known if it is down)",
                    "vmhooks vm xml myvm > myvm.xml"),
}  # fmt: skip


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "vm",
        help="create, list and operate the agent's VMs",
        description="Operate the agent's VMs, one action per API method. A VM is named by its UUID, "
        "its name or a unique UUID prefix of 8 characters or more.",
    )
    actions = parser.add_subparsers(dest="vm_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="start a VM from a domain XML file",
        **example(
            "vmhooks vm create domain.xml --prop pincpu=1-4",
            "vmhooks vm create domain.xml --device-prop 52:54:00:12:34:56:extnet=ovirtmgmt --paused",
        ),
    )
    create.add_argument("xml", metavar="FILE.xml", help="domain XML ('-' for stdin)")
    create.add_argument("--prop", action="append", metavar="NAME=VALUE", help="a VM custom property (repeatable)")
    create.add_argument("--device-prop", action="append", metavar="DEVICE:NAME=VALUE", help=DEVICE_PROP_HELP)
    create.add_argument("--paused", action="store_true", help="start paused (launch flags)")
    create.add_argument("--vm-id", help="vmId (default: the XML's <uuid>)")
    add_client_options(create)
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="the agent's VMs", **example("vmhooks vm list", "vmhooks vm list --json"))
    add_client_options(listing)
    listing.set_defaults(func=run_list)

    migrate = actions.add_parser(
        "migrate", help="live-migrate a VM to another agent", **example("vmhooks vm migrate myvm --to otherhost:54321")
    )
    migrate.add_argument("vm", metavar="VM", help=VM_HELP)
    migrate.add_argument("--to", required=True, metavar="HOST:PORT", help="the destination agent's --listen address")
    add_client_options(migrate)
    migrate.set_defaults(func=run_migrate)

    for action, spec in VM_ACTIONS.items():
        sub = actions.add_parser(action, help=spec.help, description=spec.help, **example(spec.example))
        sub.add_argument("vm", metavar="VM", help=VM_HELP)
        add_client_options(sub)
        sub.set_defaults(func=run_action, action=action)

    vm_devices.register(actions, VM_HELP)


resolve = resolve_vm  # what other commands import


def run_create(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"xml": read_input(args.xml, "domain XML"), "launchPaused": args.paused}
    if args.prop:
        params["custom"] = name_values(args.prop, "--prop")
    if args.device_prop:
        params["deviceCustom"] = device_values(args.device_prop)
    if args.vm_id:
        params["vmId"] = args.vm_id
    show_vm(args, client(args).call("VM.create", **params))
    return 0


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
    vm_id = resolve_vm(agent, args.vm)
    result = agent.call(VM_ACTIONS[args.action].method, vmId=vm_id)
    if args.action == "xml":
        if args.json:
            print_json({"vmId": vm_id, "xml": result})
        else:
            print(result.rstrip("\n"))
    elif args.action == "stats" and not args.json:
        print("\n\n".join(table(["FIELD", "VALUE"], field_rows(stats)) for stats in result["statsList"]))
    else:
        show_vm(args, result)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    agent = client(args)
    result = agent.call("VM.migrate", vmId=resolve_vm(agent, args.vm), dst=args.to)
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']} ({result['vmId']}): migrated to {result['destination']}"
              f" ({result.get('destinationStatus') or 'status unknown'} there)")  # fmt: skip
    return 0


def _props(custom: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(custom.items())) or "-"
