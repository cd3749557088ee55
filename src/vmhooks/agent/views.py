"""Read-only views of the agent's state: the VMs, a VM's XML, the installed
hooks, the hook history. Nothing here runs a hook or changes anything."""
from __future__ import annotations

import math
from typing import Any

from vmhooks import discovery, domxml
from vmhooks import history as history_db
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING, summary
from vmhooks.errors import UsageError
from vmhooks.points import get_point


def vm_xml(ctx: AgentContext, vm_id: str) -> str:
    """The live domain XML of a running VM, else the last one known."""
    with ctx.registry.vm(vm_id) as vm:
        domain = ctx.lookup(vm.vm_id) if vm.status in RUNNING else None
        return domain.XMLDesc(0) if domain is not None else vm.xml


def hooks_inventory(ctx: AgentContext) -> dict[str, dict[str, dict[str, str]]]:
    """`{point: {script: {"checksum": sha256}}}` of the installed hooks."""
    return discovery.inventory(ctx.settings.hooks_dir)


def list_vms(ctx: AgentContext) -> list[dict[str, Any]]:
    return [summary(vm) for vm in sorted(ctx.registry.all(), key=lambda v: v.name)]


def history(
    ctx: AgentContext,
    vm_id: str | None = None,
    point: str | None = None,
    limit: int = history_db.DEFAULT_PAGE,
    before: int | None = None,
    since: float | None = None,
    until: float | None = None,
    failed: bool = False,
) -> dict[str, Any]:
    """A page of the history (`history.page`), with the store's counters:
    a history write that failed is a hole in what this shows."""
    filters = history_db.Filters(
        domxml.normalise_uuid(vm_id) if vm_id is not None else None,
        _point(point), _time(since, "since"), _time(until, "until"), _flag(failed),
        None if before is None else _whole(before, "before", 1, 2**63 - 1),
    )  # fmt: skip
    page = ctx.store.history(filters, _whole(limit, "limit", 1, history_db.MAX_PAGE))
    page["counters"] = ctx.store.counters()
    return page


def history_vms(ctx: AgentContext) -> list[dict[str, Any]]:
    """Every VM in the history, gone ones too, with its last operation."""
    return ctx.store.history_vms()


def _whole(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{what} must be an integer from {low} to {high}")
    return value


def _time(value: object, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{what} must be a time in seconds since the epoch")
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise UsageError("failed must be true or false")
    return value


def _point(value: object) -> str | None:
    if value is None:
        return None
    get_point(str(value))  # an unknown name is an error, not an empty answer
    return str(value)
