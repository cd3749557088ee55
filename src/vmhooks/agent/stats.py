"""VM and host statistics and the host's capabilities, each through its
before/after JSON points."""
from __future__ import annotations

from typing import Any

import libvirt

from vmhooks import domxml
from vmhooks.agent import reports
from vmhooks.agent import libvirtconn as lv
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING
from vmhooks.agent.views import hooks_inventory
from vmhooks.errors import UsageError
from vmhooks.store import VmRecord


def vm_stats(ctx: AgentContext, vm_id: str) -> dict[str, Any]:
    with ctx.registry.vm(vm_id) as vm:
        ctx.hooks.vm("getStats", "before_get_vm_stats", {}, vm)
        result = ctx.hooks.vm("getStats", "after_get_vm_stats", [_one_vm_stats(ctx, vm)], vm)
        return {"statsList": result.payload}


def all_vm_stats(ctx: AgentContext) -> list[Any]:
    ctx.hooks.host("getAllVmStats", "before_get_all_vm_stats", {})
    vms = ctx.registry.all()
    ctx.samples.retain({vm.vm_id for vm in vms})
    stats = [_one_vm_stats(ctx, vm) for vm in vms]
    return ctx.hooks.host("getAllVmStats", "after_get_all_vm_stats", stats).payload


def _one_vm_stats(ctx: AgentContext, vm: VmRecord) -> dict[str, Any]:
    """VDSM's VmStats of one VM: RunningVmStats while libvirt runs it, else ExitedVmStats."""
    domain = ctx.lookup(vm.vm_id) if vm.status in RUNNING or vm.status == "migrating" else None
    if domain is not None:
        try:
            return reports.running_vm_stats(ctx.samples, vm.vm_id, vm.name, vm.status, domain, ctx.registry.started(vm.vm_id))
        except libvirt.libvirtError:
            pass  # it stopped meanwhile
    why = f"hibernated to {vm.save_path}" if vm.status == "hibernated" else ""
    return {**reports.exited_vm_stats(vm.vm_id, vm.status, why), "vmName": vm.name}


def host_stats(ctx: AgentContext) -> dict[str, Any]:
    ctx.hooks.host("getStats", "before_get_stats", {})
    statuses = [vm.status for vm in ctx.registry.all()]
    stats = reports.host_stats(ctx.samples, ctx.conn, statuses, ctx.started)
    return ctx.hooks.host("getStats", "after_get_stats", stats).payload


def capabilities(ctx: AgentContext) -> dict[str, Any]:
    ctx.hooks.host("getCapabilities", "before_get_caps", {})
    conn = ctx.conn
    try:
        host_caps = domxml.parse(conn.getCapabilities(), "capabilities")
    except (libvirt.libvirtError, UsageError):
        host_caps = None
    caps = lv.call("reading host info", reports.capabilities, conn, host_caps)
    caps.update(
        libvirtUri=ctx.settings.libvirt_uri,
        libvirtVersion=_version_string(lv.call("reading the libvirt version", conn.getLibVersion)),
        hooks=hooks_inventory(ctx),
    )
    return ctx.hooks.host("getCapabilities", "after_get_caps", caps).payload


def _version_string(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
