"""Read-only views of the agent's state: the VMs, a VM's XML, the installed
hooks, the hook history. Nothing here runs a hook or changes anything."""
from __future__ import annotations

from typing import Any

from vmhooks import discovery
from vmhooks import domxml
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING, summary
from vmhooks.errors import UsageError


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


def history(ctx: AgentContext, vm_id: str | None = None, point: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    key = domxml.normalise_uuid(vm_id) if vm_id is not None else None
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise UsageError("limit must be an integer from 1 to 10000")
    return ctx.store.history(key, point, limit)
