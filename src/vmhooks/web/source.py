"""Where the console's data comes from: the agent's registry and its
read-only views of the history (operations with their chains and runs,
the VMs the history knows, per-script counts), read only. The pages, the
change stamp and the metrics use the records here and nothing else of the
store, so a change of the store's shape touches this module alone."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.agent import Agent
from vmhooks.agent.registry import summary

OK = "ok"


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
    fast_path: bool = False  # forked from the warm interpreter rather than exec'd

    @property
    def failed(self) -> bool:
        return self.status != OK


class ChainView(NamedTuple):
    chain_id: int
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
    operation_id: int
    operation: str
    caller: str
    started: float
    ended: float
    result: str | None  # "ok", the error's line, or None while it runs (or if the agent died during it)
    error_kind: str | None
    reason: str | None  # why, for what libvirt or the agent did by itself
    hooks_run: int
    hooks_failed: int
    chains: tuple[ChainView, ...]

    @property
    def state(self) -> str:
        """ok, failed, hooks-failed (it went through, a script failed), running."""
        if self.result is None:
            return "running"
        if self.result != OK:
            return "failed"
        return "hooks-failed" if self.hooks_failed or any(c.failed for c in self.chains) else OK


class VmView(NamedTuple):
    vm_id: str
    name: str
    status: str  # "gone" for a VM known only from its history
    custom: Mapping[str, str]
    last_operation: str | None
    last_result: str | None  # "ok" or the error's line
    last_hooks_failed: int
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


class Page(NamedTuple):
    operations: tuple[OperationView, ...]  # oldest first
    older: int | None  # the cursor of the next older page


# -- reading ------------------------------------------------------------------


def operations(agent: Agent, vm_id: str, point: str | None, failed: bool, before: int | None, limit: int) -> Page:
    """A page of a VM's operations, each with its chains and runs."""
    page = agent.history(vmId=vm_id, point=point, limit=limit, before=before, failed=failed)
    return Page(tuple(_operation(item) for item in page["operations"]), page["before"])


def _operation(item: Mapping[str, Any]) -> OperationView:
    chains = tuple(_chain(chain, item["operation"]) for chain in item["chains"])
    ended = item["time"] + item["duration_s"] if item["duration_s"] is not None else None
    if ended is None or (chains and chains[-1].ended > ended):
        ended = max([item["time"], *(chain.ended for chain in chains)])
    return OperationView(
        item["id"], item["operation"], item["caller"], item["time"], ended, item["result"], item["error_kind"],
        item["reason"], item["hooks_run"], item["hooks_failed"], chains,
    )  # fmt: skip


def _chain(item: Mapping[str, Any], operation: str) -> ChainView:
    # A chain is recorded when it ends, and its scripts run one after another.
    ended = item["time"]
    started = ended - sum(run["duration_s"] for run in item["runs"])
    runs, clock = [], started
    for index, run in enumerate(item["runs"]):
        runs.append(
            RunView(
                f"run-{item['id']}-{index}", item["id"], operation, item["point"], run["script"], run["status"],
                run["rc"], clock, run["duration_s"], run["stderr"], run["changed"], run["diff"], run["note"],
                run["fast_path"],
            )  # fmt: skip
        )
        clock += run["duration_s"]
    return ChainView(
        item["id"], operation, item["point"], started, ended, item["aborted"], item["rejected"],
        item["edits_discarded"], tuple(item["warnings"]), tuple(runs),
    )  # fmt: skip


def vms(agent: Agent) -> list[VmView]:
    """The agent's VMs by name, then those known only from the history
    (destroyed, refused at start, migrated away), the latest first."""
    known = {item["vm_id"]: item for item in agent.history_vms()}
    views = []
    running = sorted(agent.context.registry.all(), key=lambda vm: (vm.name, vm.vm_id))
    for vm in running:
        views.append(_vm_view(vm.vm_id, vm.name, vm.status, summary(vm)["custom"], known.pop(vm.vm_id, None)))
    for item in sorted(known.values(), key=lambda item: -item["last_time"]):
        views.append(_vm_view(item["vm_id"], item["vm_name"] or "", "gone", {}, item))
    return views


def _vm_view(vm_id: str, name: str, status: str, custom: Mapping[str, str], item: Mapping[str, Any] | None) -> VmView:
    if item is None:
        return VmView(vm_id, name, status, custom, None, None, 0, None, False)
    return VmView(
        vm_id, name, status, custom, item["last_operation"], item["last_result"], item["last_hooks_failed"],
        item["last_time"], item["last_chain_failed"],
    )  # fmt: skip


def script_stats(agent: Agent, since: float) -> dict[tuple[str, str], ScriptStats]:
    """Each script's runs since `since` (epoch seconds), by (point, script)."""
    return {
        (row["point"], row["script"]): ScriptStats(
            row["point"], row["script"], row["runs"], row["failed"], row["timeouts"], row["p50_s"], row["p95_s"]
        )
        for row in agent.context.store.script_stats(since)
    }


class HistorySize(NamedTuple):
    file_bytes: int  # the SQLite file and its write-ahead log, on disk
    used_bytes: int  # the pages in use, what history_max_mb bounds
    write_failures: int  # operations and chains that could not be recorded since the start


def history_size(agent: Agent) -> HistorySize:
    store = agent.context.store
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += Path(f"{store.path}{suffix}").stat().st_size
        except OSError:
            pass
    return HistorySize(size, store.used_bytes(), store.counters().get("history_write_failures", 0))


def started(agent: Agent) -> float:
    """When the agent started (epoch seconds)."""
    return agent.context.recorder.started


def stamp(agent: Agent) -> str:
    """Changes whenever an operation starts or ends, a chain is recorded or
    a VM changes state: what the pages' live refresh polls."""
    # Every write to the history, not the newest operation: an older one
    # that ends while a newer one runs must move it too.
    digest = hashlib.sha256(str(agent.context.recorder.revision).encode())
    for vm in sorted(agent.context.registry.all(), key=lambda vm: vm.vm_id):
        digest.update(f"{vm.vm_id}={vm.status};".encode())
    return digest.hexdigest()[:16]


def libvirt_version(agent: Agent) -> str | None:
    """libvirt's version as text ("9.0.0"), None when not connected."""
    if not agent.context.connected:
        return None
    return version_text(agent.context.conn.getLibVersion())


def version_text(number: int) -> str:
    """libvirt's version numbers: major * 1,000,000 + minor * 1000 + release."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
