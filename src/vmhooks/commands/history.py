"""`vmhooks history`: what the agent did, who asked, how it ended, and what
each hook did. From the agent, or straight from its database (read-only)
when the agent is down or `--state-dir` is given."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from vmhooks import history
from vmhooks.client import AgentUnreachable, Client
from vmhooks.commands.common import add_client_options, client, match_vm, print_json, table
from vmhooks.config import DEFAULT_CONFIG_FILE, DEFAULT_STATE_DIR, load_settings_file
from vmhooks.errors import UsageError
from vmhooks.points import get_point
from vmhooks.store import Store

DB_NAME = "vmhooks.db"
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history",
        help="what the agent did to each VM, and what every hook did",
        description="Each operation (an API call, a libvirt event, recovery at start) with who asked, "
        "its result, how long it took, and the hooks it ran; newest last. Works with the agent down: "
        "--state-dir (or the config file's state_dir) reads its database read-only.",
    )
    parser.add_argument("--vm", help="only this VM: name, UUID or a unique UUID prefix (8+ characters); gone VMs too")
    parser.add_argument("--point", help="only operations that ran this hook point, and only its chains")
    parser.add_argument("--since", metavar="WHEN", help="from this time: ISO 8601 (2024-05-01T03:00) or ago (30m, 2h, 7d)")
    parser.add_argument("--until", metavar="WHEN", help="before this time (same forms as --since)")
    parser.add_argument("--failed", action="store_true", help="only operations that failed or had a hook fail")
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N",
        help=f"at most N operations (default 20, at most {history.MAX_PAGE})",
    )  # fmt: skip
    parser.add_argument("--before", type=int, metavar="ID", help="operations older than #ID (the next page)")
    parser.add_argument("--stderr", action="store_true", help="every script's stderr (default: failing scripts' only)")
    parser.add_argument("--diff", action="store_true", help="each run's payload diff")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="read DIR/vmhooks.db directly, not the agent")
    parser.add_argument(
        "--config", type=Path, help=f"where the state dir is when the agent is down (default: {DEFAULT_CONFIG_FILE})"
    )
    add_client_options(parser)
    parser.set_defaults(func=run)


class Source(Protocol):
    def vms(self) -> list[dict[str, Any]]: ...

    def page(self, params: dict[str, Any]) -> dict[str, Any]: ...


class AgentSource:
    def __init__(self, agent: Client) -> None:
        self.agent = agent

    def vms(self) -> list[dict[str, Any]]:
        known = self.agent.call("Host.getHistoryVms")
        running = [{"vm_id": vm["vmId"], "vm_name": vm["name"]} for vm in self.agent.call("VM.list")]
        return [*known, *running]

    def page(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = {"vm_id": "vmId", "point": "point", "since": "since", "until": "until", "failed": "failed",
                "before": "before", "limit": "limit"}  # fmt: skip
        return self.agent.call("Host.getHookHistory", **{keys[k]: v for k, v in params.items() if v is not None})


class FileSource:
    """The database itself, read-only: nothing is created or changed."""

    def __init__(self, state_dir: Path) -> None:
        self.store = Store.open_read_only(state_dir / DB_NAME)

    def vms(self) -> list[dict[str, Any]]:
        return self.store.history_vms()

    def page(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = params.pop("limit")
        return self.store.history(history.Filters(**params), limit)


def open_source(args: argparse.Namespace) -> Source:
    if args.state_dir is not None:
        return FileSource(args.state_dir)
    agent = AgentSource(client(args))
    try:
        agent.agent.call("Host.getHistoryVms")
        return agent
    except AgentUnreachable:
        if args.socket is not None:
            raise
    state_dir = configured_state_dir(args.config)
    print(f"(no agent at {agent.agent.where}: reading {state_dir / DB_NAME})", file=sys.stderr)
    return FileSource(state_dir)


def configured_state_dir(config: Path | None) -> Path:
    if config is None and DEFAULT_CONFIG_FILE.exists():
        config = DEFAULT_CONFIG_FILE
    values = load_settings_file(config) if config is not None else {}
    return Path(values.get("state_dir", DEFAULT_STATE_DIR))


def parse_time(text: str, what: str) -> float:
    """ISO 8601 (local time unless it says otherwise) or a span ago (2h)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return time.time() - float(relative[1]) * _UNITS[relative[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"{what} {text!r} is neither ISO 8601 (2024-05-01T03:00) nor a span ago (30m, 2h, 7d)") from None


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= history.MAX_PAGE:
        raise UsageError(f"--limit must be from 1 to {history.MAX_PAGE}")
    if args.before is not None and args.before < 1:
        raise UsageError("--before takes an operation's number (#N), from 1")
    if args.point:
        get_point(args.point)  # a typo is an error (with a hint), not an empty history
    params: dict[str, Any] = {
        "point": args.point,
        "since": parse_time(args.since, "--since") if args.since else None,
        "until": parse_time(args.until, "--until") if args.until else None,
        "failed": args.failed,
        "before": args.before,
        "limit": args.limit,
        "vm_id": None,
    }
    source = open_source(args)
    if args.vm:
        params["vm_id"] = match_vm(args.vm, [(vm["vm_id"], vm["vm_name"] or "") for vm in source.vms()])
    page = source.page(params)
    if args.json:
        print_json(page)
        return 0
    print_page(page, args)
    return 0


def print_page(page: dict[str, Any], args: argparse.Namespace) -> None:
    failures = (page.get("counters") or {}).get("history_write_failures", 0)
    if failures:
        print(f"warning: {failures} history writes failed since the agent started (disk full?): "
              "this history has holes; the agent's log says more", file=sys.stderr)  # fmt: skip
    operations = page["operations"]
    if not operations:
        print("no operations recorded" + (" that match" if _filtered(args) else ""))
        return
    for operation in operations:
        print(operation_line(operation))
        for line in chain_lines(operation, args.stderr, args.diff):
            print(f"    {line}" if line else "")
    if page.get("before"):
        print(f"\nolder: vmhooks history --before {page['before']}{_same_filters(args)}")


def operation_line(operation: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(operation["time"]))
    target = f"VM {operation['vm_name'] or '?'} ({operation['vm_id']})" if operation["vm_id"] else "host"
    reason = f" [{operation['reason']}]" if operation["reason"] else ""
    result = operation["result"]
    outcome = "unfinished (running, or the agent stopped during it)" if result is None else (
        "ok" if result == "ok" else f"FAILED: {result}")  # fmt: skip
    took = "" if operation["duration_s"] is None else f"{operation['duration_s']:.3f} s; "
    hooks = f"hooks: {operation['hooks_run']} run, {operation['hooks_failed']} failed"
    who = f"by {operation['caller']}{reason}"
    return f"#{operation['id']} {when} {operation['operation']} {target} {who}: {outcome} ({took}{hooks})"


def chain_lines(operation: dict[str, Any], all_stderr: bool, diffs: bool) -> list[str]:
    rows, notes = [], []
    for chain in operation["chains"]:
        for run in chain["runs"]:
            rows.append([
                chain["point"], run["script"], run["status"], "-" if run["rc"] is None else run["rc"],
                f"{run['duration_s'] * 1000:.0f}", _change(chain, run), _note(run),
            ])  # fmt: skip
            where = f"{chain['point']}/{run['script']}"
            blamed = (chain["rejected"] or "").startswith(f"output rejected: {run['script']} ")
            culprit = run["status"] != "ok" or blamed
            if run["stderr"].strip() and (all_stderr or culprit):
                notes += [f"{where} stderr:", *(f"  | {line}" for line in run["stderr"].rstrip().splitlines())]
            if diffs and run["diff"]:
                notes += [f"{where} diff:", *(f"  {line}" for line in run["diff"].rstrip().splitlines())]
        if chain["rejected"]:
            notes.append(f"{chain['point']}: {chain['rejected']}")
        notes += [f"{chain['point']}: warning: {warning}" for warning in chain["warnings"]]
    if operation.get("chains_omitted"):
        notes.append(f"({operation['chains_omitted']} more chains: ask with --point or --json)")
    if not rows:
        return notes
    return [*table(["POINT", "SCRIPT", "STATUS", "RC", "MS", "CHANGED", "NOTE"], rows).splitlines(), *notes]


def _change(chain: dict[str, Any], run: dict[str, Any]) -> str:
    if not run["changed"]:
        return ""
    return "discarded" if chain["edits_discarded"] else "yes"


def _note(run: dict[str, Any]) -> str:
    """The run's note, and `fast path` for a Python hook forked from the warm
    interpreter (an agent older than the field does not say)."""
    return "; ".join(part for part in (run["note"], "fast path" if run.get("fast_path") else "") if part)


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.vm or args.point or args.since or args.until or args.failed or args.before)


def _same_filters(args: argparse.Namespace) -> str:
    words = []
    for flag in ("vm", "point", "since", "until", "state_dir", "socket"):
        value = getattr(args, flag)
        if value is not None:
            words.append(f"--{flag.replace('_', '-')} {shlex.quote(str(value))}")
    words += ["--failed"] * args.failed + [f"--limit {args.limit}"] * (args.limit != 20)
    return "".join(f" {word}" for word in words)
