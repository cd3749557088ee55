"""`vmhooks vm` actions that change a running VM: device hot(un)plug and
update (one table: a VM, a device XML, its custom properties), the display
ticket and the number of CPUs."""
from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from vmhooks.commands.common import (
    add_client_options,
    client,
    example,
    name_values,
    read_input,
    resolve_vm,
    show_vm,
)
from vmhooks.errors import UsageError


class DeviceAction(NamedTuple):
    """An action that hands the agent one device element."""

    method: str
    element: str  # what the XML file holds, for --help
    help: str
    example: str


DEVICE_ACTIONS: dict[str, DeviceAction] = {
    "hotplug-nic": DeviceAction(
        "VM.hotplugNic", "<interface>", "plug a NIC into a running VM (before/after_nic_hotplug)",
        "vmhooks vm hotplug-nic myvm nic.xml --prop extnet=ovirtmgmt"),
    "hotunplug-nic": DeviceAction(
        "VM.hotunplugNic", "<interface>", "unplug a NIC, found by its MAC or alias (before/after_nic_hotunplug)",
        "vmhooks vm hotunplug-nic myvm nic.xml"),
    "hotplug-disk": DeviceAction(
        "VM.hotplugDisk", "<disk>", "plug a disk into a running VM (before/after_disk_hotplug)",
        "vmhooks vm hotplug-disk myvm disk.xml"),
    "hotunplug-disk": DeviceAction(
        "VM.hotunplugDisk", "<disk>", "unplug a disk, found by its target dev or alias (before/after_disk_hotunplug)",
        "vmhooks vm hotunplug-disk myvm disk.xml"),
    "update-device": DeviceAction(
        "VM.updateDevice", "device element", "change a live device, e.g. a NIC's link state (before/after_update_device)",
        "vmhooks vm update-device myvm nic-link-down.xml"),
    "hotplug-memory": DeviceAction(
        "VM.hotplugMemory", "<memory>", "add a memory DIMM to a running VM (before/after_memory_hotplug)",
        "vmhooks vm hotplug-memory myvm dimm.xml"),
}  # fmt: skip

EXISTING_CONN_ACTIONS = ("disconnect", "keep", "fail")


def register(actions: Any, vm_help: str) -> None:
    for action, spec in DEVICE_ACTIONS.items():
        sub = actions.add_parser(action, help=spec.help, description=spec.help, **example(spec.example))
        sub.add_argument("vm", metavar="VM", help=vm_help)
        sub.add_argument("xml", metavar="FILE.xml", help=f"the {spec.element} XML ('-' for stdin)")
        sub.add_argument(
            "--prop", action="append", metavar="NAME=VALUE",
            help="a custom property of this device (repeatable); without any, the device keeps those it has",
        )  # fmt: skip
        add_client_options(sub)
        sub.set_defaults(func=run_device, action=action)

    ticket = actions.add_parser(
        "set-ticket",
        help="set the VNC/SPICE display password (before/after_vm_set_ticket)",
        **example(
            "echo s3cret | vmhooks vm set-ticket myvm --password-file - --ttl 120",
            "vmhooks vm set-ticket myvm --password-file pw.txt --param userName=admin",
        ),
    )
    ticket.add_argument("vm", metavar="VM", help=vm_help)
    source = ticket.add_mutually_exclusive_group(required=True)
    source.add_argument("--password-file", metavar="FILE", help="read the password from FILE ('-' for stdin)")
    source.add_argument("--password", help="the password (visible to other users in ps: prefer --password-file)")
    ticket.add_argument("--ttl", type=int, metavar="SECONDS", help="the password expires after this (default: never)")
    ticket.add_argument(
        "--existing-conn-action", choices=EXISTING_CONN_ACTIONS, default="disconnect",
        help="what happens to connected clients (SPICE only; default: disconnect)",
    )  # fmt: skip
    ticket.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a param for the hooks, e.g. userName=admin (repeatable)"
    )
    add_client_options(ticket)
    ticket.set_defaults(func=run_set_ticket)

    cpus = actions.add_parser(
        "set-cpus",
        help="set the number of online vCPUs (before/after_set_num_of_cpus)",
        **example("vmhooks vm set-cpus myvm 4"),
    )
    cpus.add_argument("vm", metavar="VM", help=vm_help)
    cpus.add_argument("count", metavar="COUNT", type=int, help="vCPUs, at most the domain's <vcpu> maximum")
    add_client_options(cpus)
    cpus.set_defaults(func=run_set_cpus)


def run_device(args: argparse.Namespace) -> int:
    spec = DEVICE_ACTIONS[args.action]
    params: dict[str, Any] = {"xml": read_input(args.xml, "device XML")}
    if args.prop:
        params["custom"] = name_values(args.prop, "--prop")
    agent = client(args)
    result = agent.call(spec.method, vmId=resolve_vm(agent, args.vm), **params)
    show_vm(args, result, done=f"{args.action} done")
    return 0


def run_set_ticket(args: argparse.Namespace) -> int:
    if args.password_file is not None:
        password = read_input(args.password_file, "password file").rstrip("\r\n")
    else:
        password = args.password
    if not password:
        raise UsageError("the password is empty")
    params: dict[str, Any] = {"password": password, "existingConnAction": args.existing_conn_action}
    if args.ttl is not None:
        params["ttl"] = args.ttl
    if args.param:
        params["params"] = name_values(args.param, "--param")
    agent = client(args)
    result = agent.call("VM.setTicket", vmId=resolve_vm(agent, args.vm), **params)
    show_vm(args, result, done="ticket set" + (f", valid for {args.ttl} s" if args.ttl is not None else ""))
    return 0


def run_set_cpus(args: argparse.Namespace) -> int:
    agent = client(args)
    result = agent.call("VM.setNumberOfCpus", vmId=resolve_vm(agent, args.vm), numberOfCpus=args.count)
    show_vm(args, result, done=f"{args.count} vCPUs")
    return 0
