"""VM and host statistics and the host's capabilities, each through its
before/after JSON points."""
from __future__ import annotations

import socket
import time
from typing import Any

import libvirt

from vmhooks import __version__
from vmhooks import domxml
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
    stats = [_one_vm_stats(ctx, vm) for vm in ctx.registry.all()]
    return ctx.hooks.host("getAllVmStats", "after_get_all_vm_stats", stats).payload


def _one_vm_stats(ctx: AgentContext, vm: VmRecord) -> dict[str, Any]:
    stats: dict[str, Any] = {"vmId": vm.vm_id, "vmName": vm.name, "status": vm.status}
    domain = ctx.lookup(vm.vm_id) if vm.status in RUNNING else None
    if domain is not None:
        try:
            state, max_mem, memory, vcpus, cpu_time = domain.info()
        except libvirt.libvirtError:
            return stats
        stats.update({"memoryKiB": memory, "maxMemoryKiB": max_mem, "vcpuCount": vcpus, "cpuTimeNs": cpu_time})
    return stats


def host_stats(ctx: AgentContext) -> dict[str, Any]:
    ctx.hooks.host("getStats", "before_get_stats", {})
    model, memory_mib, cpus, mhz, *_ = lv.call("reading host info", ctx.conn.getInfo)
    statuses = [vm.status for vm in ctx.registry.all()]
    stats = {
        "cpuModel": model,
        "cpuCount": cpus,
        "cpuMHz": mhz,
        "memTotalMiB": memory_mib,
        "vmCount": len(statuses),
        "vmActive": sum(status in RUNNING for status in statuses),
        "time": time.time(),
    }
    return ctx.hooks.host("getStats", "after_get_stats", stats).payload


def capabilities(ctx: AgentContext) -> dict[str, Any]:
    ctx.hooks.host("getCapabilities", "before_get_caps", {})
    conn = ctx.conn
    model, memory_mib, cpus, *_ = lv.call("reading host info", conn.getInfo)
    caps = {
        "hostname": socket.gethostname(),
        "version": __version__,
        "libvirtUri": ctx.settings.libvirt_uri,
        "libvirtVersion": _version_string(lv.call("reading the libvirt version", conn.getLibVersion)),
        "hypervisor": lv.call("reading the hypervisor type", conn.getType),
        "hostUUID": _host_uuid(conn),
        "cpuModel": model,
        "cpuCores": cpus,
        "memSizeMiB": memory_mib,
        "hooks": hooks_inventory(ctx),
    }
    return ctx.hooks.host("getCapabilities", "after_get_caps", caps).payload


def _version_string(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _host_uuid(conn: libvirt.virConnect) -> str | None:
    try:
        root = domxml.parse(conn.getCapabilities(), "capabilities")
    except (libvirt.libvirtError, UsageError):
        return None
    return root.findtext("host/uuid")
