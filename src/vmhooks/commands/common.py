"""Argument helpers shared by subcommands."""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vmhooks.client import Client
from vmhooks.config import default_hooks_dir, default_socket, pythonpath_dirs
from vmhooks.errors import UsageError


def add_hooks_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hooks-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="hooks root (default: $VMHOOKS_HOOKS_DIR, else /usr/libexec/vdsm/hooks)",
    )


def add_hooks_pythonpath(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hooks-pythonpath",
        metavar="DIR:DIR",
        help="directories appended to the hooks' PYTHONPATH (site modules)",
    )


def hooks_pythonpath(args: argparse.Namespace) -> tuple[Path, ...]:
    value = getattr(args, "hooks_pythonpath", None)
    return pythonpath_dirs(value) if value else ()


def hooks_dir(args: argparse.Namespace) -> Path:
    return args.hooks_dir if args.hooks_dir is not None else default_hooks_dir()


def existing_hooks_dir(args: argparse.Namespace) -> Path:
    """The hooks root, which must exist: one error (exit 2) for every command
    that reads a tree, rather than an empty answer that hides a typo."""
    root = hooks_dir(args)
    if not root.is_dir():
        raise UsageError(f"hooks directory {str(root)!r} does not exist")
    return root


def name_values(pairs: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b='] -> {'a': '1', 'b': ''}. A pair without '=' or a name
    given twice is an error: either is a typo more often than a wish."""
    values: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not name or not sep:
            raise UsageError(f"{what} {pair!r}: expected NAME=VALUE (NAME= for an empty value)")
        if name in values:
            raise UsageError(f"{what} {name!r} is given twice")
        values[name] = value
    return values


def device_values(pairs: list[str] | None, what: str = "--device-prop") -> dict[str, dict[str, str]]:
    """['52:54:00:12:34:56:extnet=br0'] -> {'52:54:00:12:34:56': {'extnet': 'br0'}}.

    The device is everything before the last ':' that comes before the first
    '=', so a MAC address (which has colons of its own) names a device and a
    value may hold ':' and '='."""
    devices: dict[str, dict[str, str]] = {}
    for pair in pairs or ():
        head, sep, value = pair.partition("=")
        device, colon, name = head.rpartition(":")
        if not sep or not colon or not device or not name:
            raise UsageError(f"{what} {pair!r}: expected DEVICE:NAME=VALUE")
        props = devices.setdefault(device, {})
        if name in props:
            raise UsageError(f"{what} {name!r} is given twice for device {device!r}")
        props[name] = value
    return devices


def read_input(source: str, what: str) -> str:
    """The text of FILE, or of stdin for '-'; one clear error otherwise."""
    try:
        if source == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(source).read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {source!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {source!r} is not UTF-8 (byte {exc.start})") from None


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help=f"the agent's socket (default: $VMHOOKS_SOCKET, else {default_socket()})",
    )
    add_json_option(parser)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help='JSON output; errors too, as {"error": {"code", "message"}} on stdout'
    )


def example(*lines: str) -> dict[str, Any]:
    """add_parser() arguments that end the command's --help with examples."""
    heading = "example:" if len(lines) == 1 else "examples:"
    return {
        "epilog": heading + "\n" + "\n".join(f"  {line}" for line in lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def client(args: argparse.Namespace) -> Client:
    return Client(args.socket if args.socket is not None else default_socket())


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    )


MIN_UUID_PREFIX = 8


def match_vm(query: str, candidates: Iterable[tuple[str, str]]) -> str:
    """The vmId that `query` names among (vmId, name) pairs: a full UUID, a
    name, or a unique UUID prefix of at least 8 characters. An ambiguous or
    unknown query is one error line listing what it could mean."""
    try:
        return str(uuid.UUID(query))
    except ValueError:
        pass
    pairs = sorted(set(candidates))
    found = {vm_id for vm_id, name in pairs if name == query}
    if not found and len(query) >= MIN_UUID_PREFIX:
        found = {vm_id for vm_id, _ in pairs if vm_id.startswith(query.lower())}
    if len(found) == 1:
        return found.pop()
    if not found:
        hint = f" (a UUID prefix needs at least {MIN_UUID_PREFIX} characters)" if len(query) < MIN_UUID_PREFIX else ""
        raise UsageError(f"no VM named {query!r} or with a UUID starting with it{hint}")
    listed = ", ".join(f"{vm_id} ({name})" for vm_id, name in pairs if vm_id in found)
    raise UsageError(f"{query!r} could be {len(found)} VMs: {listed}; give more of the UUID")


def resolve_vm(agent: Client, vm: str) -> str:
    """A VM's UUID from its UUID, its name or a unique UUID prefix."""
    try:
        return str(uuid.UUID(vm))
    except ValueError:
        pass
    return match_vm(vm, ((item["vmId"], item["name"]) for item in agent.call("VM.list")))


def show_vm(args: argparse.Namespace, result: dict[str, Any], done: str = "") -> None:
    """The agent's summary of a VM: as JSON, or `name (uuid): [done, ]status`."""
    if args.json:
        print_json(result)
    else:
        print(f"{result['name']} ({result['vmId']}): {done + ', ' if done else ''}{result['status']}")
