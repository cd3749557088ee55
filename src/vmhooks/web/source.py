"""Where the console's data comes from: the agent's registry and the
history in its store, read only. The pages and the change stamp use the
records here and nothing else of the store, so a change of the store's
shape touches this module alone."""
from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Mapping
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.agent import Agent
from vmhooks.agent.registry import summary

FAILED = "failed"  # an operation, or chain, where a script failed or the output was refused
SCAN_LIMIT = 10_000  # history rows read at most for one page (the store has no cursor yet)


class RunView(NamedTuple):
    key: str  # the run's anchor: stable across reloads
    chain_id: int
    operation: str
    point: str
    script: str
    status: str
    rc: int | None
    started: float  # epoch seconds
    duration_s: float
    stderr: str
    changed: bool
    diff: str
    note: str

    @property
    def failed(self) -> bool:
        return self.status != "ok"


class ChainView(NamedTuple):
    chain_id: int
    vm_id: str | None
    operation: str
    point: str
    started: float
    ended: float
    aborted: bool
    rejected: str | None
    edits_discarded: bool
    warnings: tuple[str, ...]
    runs: tuple[RunView, ...]

    @property
    def failed(self) -> bool:
        return self.rejected is not None or any(run.failed for run in self.runs)


class OperationView(NamedTuple):
    operation: str
    started: float
    ended: float
    result: str  # "ok" or FAILED
    chains: tuple[ChainView, ...]


class VmView(NamedTuple):
    vm_id: str
    name: str  # "" for a VM the agent no longer has
    status: str  # "gone" for a VM known only from its history
    custom: Mapping[str, str]
    last_operation: str | None
    last_result: str | None  # "ok" or FAILED
    last_time: float | None
    last_chain_failed: bool


class ScriptStats(NamedTuple):
    point: str
    script: str
    runs: int
    failures: int
    timeouts: int
    p50_s: float | None
    p95_s: float | None


# -- reading ------------------------------------------------------------------


def chains(agent: Agent, vm_id: str | None = None, limit: int = SCAN_LIMIT) -> list[ChainView]:
    """Chains oldest first, each with its runs, timed from its record."""
    rows = agent.context.store.history(vm_id, None, limit)
    found = []
    for chain_id, group in groupby(rows, key=lambda row: row["chain"]):
        found.append(_chain(chain_id, list(group)))
    return found


def _chain(chain_id: int, rows: list[dict[str, Any]]) -> ChainView:
    first = rows[0]
    scripts = [row for row in rows if row["script"] is not None]
    # A chain is recorded when it ends and its scripts run one after another.
    ended = first["time"]
    started = ended - sum(row["duration_s"] for row in scripts)
    runs, clock = [], started
    for index, row in enumerate(scripts):
        runs.append(
            RunView(
                f"run-{chain_id}-{index}", chain_id, first["operation"], first["point"], row["script"],
                row["status"], row["rc"], clock, row["duration_s"], row["stderr"], row["changed"],
                row["diff"], row["note"],
            )  # fmt: skip
        )
        clock += row["duration_s"]
    return ChainView(
        chain_id, first["vm_id"], first["operation"], first["point"], started, ended, first["aborted"],
        first["rejected"], first["edits_discarded"], tuple(first["warnings"]), tuple(runs),
    )  # fmt: skip


def operations(found: Iterable[ChainView]) -> list[OperationView]:
    """Consecutive chains of one operation, oldest first. A `before_` chain
    after an `after_` one starts the next operation of the same name."""
    grouped: list[list[ChainView]] = []
    for chain in found:
        current = grouped[-1] if grouped else None
        repeated = current is not None and chain.point.startswith("before_") and any(
            c.point.startswith("after_") for c in current
        )
        if current is None or current[0].operation != chain.operation or repeated:
            grouped.append([chain])
        else:
            current.append(chain)
    return [
        OperationView(
            group[0].operation, group[0].started, max(c.ended for c in group),
            FAILED if any(c.failed for c in group) else "ok", tuple(group),
        )  # fmt: skip
        for group in grouped
    ]


def vms(agent: Agent) -> list[VmView]:
    """The agent's VMs by name, then those known only from the history."""
    last: dict[str, ChainView] = {}
    for chain in chains(agent):
        if chain.vm_id is not None:
            last[chain.vm_id] = chain
    views = []
    known = sorted(agent.context.registry.all(), key=lambda vm: (vm.name, vm.vm_id))
    for vm in known:
        views.append(_vm_view(vm.vm_id, vm.name, vm.status, summary(vm)["custom"], last.get(vm.vm_id)))
    gone = {vm.vm_id for vm in known}
    for vm_id, chain in sorted(last.items(), key=lambda item: -item[1].ended):
        if vm_id not in gone:
            views.append(_vm_view(vm_id, "", "gone", {}, chain))
    return views


def _vm_view(vm_id: str, name: str, status: str, custom: Mapping[str, str], chain: ChainView | None) -> VmView:
    if chain is None:
        return VmView(vm_id, name, status, custom, None, None, None, False)
    result = FAILED if chain.failed else "ok"
    return VmView(vm_id, name, status, custom, chain.operation, result, chain.ended, chain.failed)


def script_stats(agent: Agent, since: float) -> dict[tuple[str, str], ScriptStats]:
    """Each script's runs since `since` (epoch seconds), by (point, script)."""
    durations: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], int] = {}
    timeouts: dict[tuple[str, str], int] = {}
    for chain in chains(agent):
        if chain.ended < since:
            continue
        for run in chain.runs:
            key = (run.point, run.script)
            durations.setdefault(key, []).append(run.duration_s)
            failures[key] = failures.get(key, 0) + run.failed
            timeouts[key] = timeouts.get(key, 0) + (run.status == "timeout")
    return {
        key: ScriptStats(key[0], key[1], len(values), failures[key], timeouts[key], *_percentiles(values))
        for key, values in durations.items()
    }


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]


def history_size_bytes(agent: Agent) -> int:
    """The SQLite file and its write-ahead log."""
    path: Path = agent.context.store.path
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += Path(f"{path}{suffix}").stat().st_size
        except OSError:
            pass
    return size


def stamp(agent: Agent) -> str:
    """Changes whenever a chain is recorded or a VM changes state: what the
    pages' live refresh polls."""
    latest = agent.context.store.history(None, None, 1)
    digest = hashlib.sha256(str(latest[-1]["chain"] if latest else 0).encode())
    for vm in sorted(agent.context.registry.all(), key=lambda vm: vm.vm_id):
        digest.update(f"{vm.vm_id}={vm.status};".encode())
    return digest.hexdigest()[:16]


def libvirt_version(agent: Agent) -> str | None:
    """libvirt's version as text ("9.0.0"), None when not connected."""
    if not agent.context.connected:
        return None
    number = agent.context.conn.getLibVersion()
    return version_text(number)


def version_text(number: int) -> str:
    """libvirt's version numbers: major * 1,000,000 + minor * 1000 + release."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
