"""`vmhooks hooks run POINT`: run a point's chain offline and show what each
script did."""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from typing import Any

from vmhooks.commands.common import add_hooks_dir, add_hooks_pythonpath, example, existing_hooks_dir, hooks_pythonpath, name_values, read_input
from vmhooks.errors import UsageError
from vmhooks.points import HookPoint, Payload, Scope, get_point
from vmhooks import containment, metadata, properties
from vmhooks.catalogue import installed_property_rules
from vmhooks.forkserver import FastPathSettings
from vmhooks.runner import ChainResult, RunnerConfig, run_chain


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="dry-run a point's chain against an XML or JSON payload",
        description="Run POINT's scripts offline, as the agent would, and report what each did.",
        **example(
            "vmhooks hooks run before_vm_start --hooks-dir hooks --xml domain.xml --prop pincpu=1-4",
            "vmhooks hooks run after_get_caps --json caps.json --output payload",
        ),
    )
    parser.add_argument("point", metavar="POINT", help="a hook point ('vmhooks hooks points' lists them)")
    add_hooks_dir(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--xml", metavar="FILE", help="domain or device XML ('-' for stdin)")
    source.add_argument("--json", metavar="FILE", help="JSON payload ('-' for stdin)")
    parser.add_argument("--vm-id", help="vmId (default: the domain XML's <uuid>)")
    parser.add_argument("--prop", action="append", metavar="NAME=VALUE",
                        help="a custom property (repeatable, each name once; NAME= for an empty value)")
    parser.add_argument("--param", action="append", metavar="NAME=VALUE", help="a call parameter (repeatable)")
    parser.add_argument(
        "--properties",
        metavar="NAME=REGEX;...",
        help="admin property definitions (oVirt UserDefinedVMProperties form), checked "
        "with those of the installed catalogue hooks",
    )
    add_hooks_pythonpath(parser)
    parser.add_argument("--libvirt-uri", help="the libvirt URI hooks connect to (vdsm.common.libvirtconnection)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="per-script timeout")
    parser.add_argument("--output", choices=("report", "payload", "json"), default="report")
    parser.add_argument(
        "--allow-unsafe", action="store_true", help="development: run group/other-writable scripts"
    )
    parser.add_argument(
        "--no-fast-path", dest="fast_path", action="store_false",
        help="exec every Python hook instead of forking it from a warm interpreter",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    point = get_point(args.point)
    root = existing_hooks_dir(args)
    payload = _payload(point, args)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    vm_id = args.vm_id
    if vm_id is None and point.scope is not Scope.HOST and point.payload is Payload.DOMAIN:
        vm_id = _domain_uuid(payload)
    rules = properties.combine(installed_property_rules(root), properties.parse_user_defined(args.properties))
    config = RunnerConfig(
        root, allow_unsafe=args.allow_unsafe, property_rules=rules,
        hooks_pythonpath=hooks_pythonpath(args), libvirt_uri=args.libvirt_uri,
        fast_path=FastPathSettings(args.fast_path),
    )  # fmt: skip
    result = run_chain(
        point.name,
        payload,
        config,
        params=name_values(args.param, "--param"),
        custom=_custom(point, payload, name_values(args.prop, "--prop")),
        vm_id=vm_id,
        timeout=args.timeout,
    )
    if args.output == "payload":
        _print_payload(point, result.payload)
    elif args.output == "json":
        print(json.dumps(result_json(result), indent=2))
    else:
        print(report(result))
    return 1 if result.failed else 0


def _payload(point: HookPoint, args: argparse.Namespace) -> Any:
    if point.payload is Payload.JSON:
        if args.xml is not None:
            raise UsageError(f"{point.name} takes a JSON payload: use --json, not --xml")
        if args.json is None:
            return {}
        text = read_input(args.json, "JSON file")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"JSON file {args.json!r} is not valid JSON: {exc}") from None
    if args.json is not None:
        raise UsageError(f"{point.name} takes an XML payload: use --xml, not --json")
    if point.payload is Payload.NONE:
        return None
    if args.xml is None:
        raise UsageError(f"{point.name} needs a {point.payload.value} XML: pass --xml FILE")
    text = read_input(args.xml, "XML file")
    try:
        ET.fromstring(text)
    except ET.ParseError as exc:
        raise UsageError(f"XML file {args.xml!r} is malformed: {exc}") from None
    return text


def _custom(point: HookPoint, payload: Any, given: dict[str, str]) -> dict[str, object]:
    """--prop values over those in the domain XML's Engine metadata."""
    if point.payload is not Payload.DOMAIN or not payload:
        return dict(given)
    return {**metadata.read(ET.fromstring(payload)).custom, **given}


def _domain_uuid(xml: str) -> str | None:
    uuid = ET.fromstring(xml).findtext("uuid")
    return uuid.strip() if uuid else None


def _print_payload(point: HookPoint, payload: Any) -> None:
    if point.payload is Payload.JSON:
        print(json.dumps(payload, indent=2))
    elif payload:
        sys.stdout.write(payload if payload.endswith("\n") else payload + "\n")


def result_json(result: ChainResult) -> dict[str, Any]:
    return {
        "point": result.point.name,
        "aborts_operation": result.aborts_operation,
        "failed": result.failed,
        "rejected": result.rejected,
        "edits_discarded": result.edits_discarded,
        "warnings": list(result.warnings),
        "containment": containment.report()._asdict(),
        "payload": result.payload,
        "scripts": [
            {
                "name": run.name,
                "status": str(run.status),
                "rc": run.rc,
                "duration_s": round(run.duration_s, 6),
                "stderr": run.stderr,
                "changed": run.changed,
                "note": run.note,
                "diff": run.diff,
                "fast_path": run.fast_path,
            }
            for run in result.scripts
        ],
    }


def report(result: ChainResult) -> str:
    """A table of scripts, then each one's stderr and diff, then the verdict."""
    point = result.point
    if not result.scripts:
        return f"{point.name}: no scripts to run"
    lines = [f"{point.name}:", f"  {'STATUS':<14} {'RC':>4} {'TIME':>8}  SCRIPT"]
    for run in result.scripts:
        rc = "-" if run.rc is None else str(run.rc)
        changed = "  (changed payload)" if run.changed else ""
        lines.append(
            f"  {str(run.status):<14} {rc:>4} {run.duration_s * 1000:>6.0f}ms  {run.name}{changed}"
        )
        if run.note:
            lines.append(f"  {'':<14} {'':>4} {'':>8}  ^ {run.note}")
    for run in result.scripts:
        if run.stderr.strip():
            lines += ["", f"--- {run.name}: stderr", run.stderr.rstrip("\n")]
        if run.diff:
            lines += ["", f"--- {run.name}: changes", run.diff.rstrip("\n")]
    lines.append("")
    lines += [f"warning: {warning}" for warning in result.warnings]
    if result.failed:
        effect = "the operation would be ABORTED" if result.aborts_operation else "the operation goes on"
        lines.append(f"FAILED, {effect}: {result.error_message()}")
    else:
        lines.append("OK")
    if result.edits_discarded:
        lines.append(f"note: {point.name}'s output is not used: the edits above are discarded")
    elif point.output_used and result.changed and not result.rejected:
        lines.append("the changed payload is what the agent would use (--output payload prints it)")
    return "\n".join(lines)
