"""Live changes to a running VM: device hot(un)plug and update (one table),
the display ticket, the number of CPUs."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import libvirt

from vmhooks import environment
from vmhooks import domxml
from vmhooks.agent import libvirtconn as lv
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING
from vmhooks.errors import HookError, LibvirtError, UsageError

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
MAX_TICKET_TTL = 10 * 365 * 86400  # seconds
MAX_CPUS = 4096


class DeviceOperation(NamedTuple):
    """A hot(un)plug or update: a device XML through the points, then libvirt."""

    tag: str | None  # the device element it takes (None: any)
    before: str
    after: str
    fail: str | None  # runs when libvirt fails
    libvirt_method: str
    remember: bool | None  # True: keep the device's properties; False: forget them
    fail_on_refusal: bool = False  # `fail` also runs when the before chain refuses


DEVICE_OPERATIONS: dict[str, DeviceOperation] = {
    "hotplugNic": DeviceOperation(
        "interface", "before_nic_hotplug", "after_nic_hotplug", "after_nic_hotplug_fail",
        "attachDeviceFlags", True),
    "hotunplugNic": DeviceOperation(
        "interface", "before_nic_hotunplug", "after_nic_hotunplug", "after_nic_hotunplug_fail",
        "detachDeviceFlags", False),
    "hotplugDisk": DeviceOperation(
        "disk", "before_disk_hotplug", "after_disk_hotplug", None, "attachDeviceFlags", True),
    "hotunplugDisk": DeviceOperation(
        "disk", "before_disk_hotunplug", "after_disk_hotunplug", None, "detachDeviceFlags", False),
    "updateDevice": DeviceOperation(
        None, "before_update_device", "after_update_device", "after_update_device_fail",
        "updateDeviceFlags", True, fail_on_refusal=True),
    "hotplugMemory": DeviceOperation(
        "memory", "before_memory_hotplug", "after_memory_hotplug", None, "attachDeviceFlags", None),
}  # fmt: skip


def device_operation(
    ctx: AgentContext, name: str, vm_id: str, xml: str, custom: Mapping[str, object] | None = None
) -> dict[str, Any]:
    operation = DEVICE_OPERATIONS[name]
    device = domxml.parse(xml, "device XML")
    if operation.tag is not None and device.tag != operation.tag:
        raise UsageError(f"{name} takes a <{operation.tag}> element, not <{device.tag}>")
    new_custom = ctx.hooks.check_custom(custom, "device custom property") if custom else None
    hooks = ctx.hooks
    with ctx.registry.vm(vm_id, RUNNING) as vm:
        domain = ctx.domain(vm)
        keys = domxml.device_keys(device)
        known = next((vm.device_custom[k] for k in keys if k in vm.device_custom), {})
        props = new_custom if new_custom is not None else known
        try:
            result = hooks.device(name, operation.before, xml, vm, props)
        except HookError:
            if operation.fail and operation.fail_on_refusal:
                hooks.device(name, operation.fail, xml, vm, props)
            raise
        device_xml = result.payload
        try:
            lv.call(f"{name} on VM {vm.name}", getattr(domain, operation.libvirt_method), device_xml, LIVE)
            if operation.libvirt_method == "detachDeviceFlags":
                _check_released(f"{name} on VM {vm.name}", domain, domxml.parse(device_xml, "device XML"))
        except Exception:
            if operation.fail:
                hooks.device(name, operation.fail, device_xml, vm, props)
            raise
        device_custom = dict(vm.device_custom)
        keys |= domxml.device_keys(domxml.parse(device_xml, "device XML"))
        for key in keys:
            device_custom.pop(key, None)
        if operation.remember and props:
            device_custom[sorted(keys)[0] if keys else "device"] = dict(props)
        vm = ctx.registry.follow(vm, xml=domain.XMLDesc(0), device_custom=device_custom)
        hooks.device(name, operation.after, device_xml, vm, props)
        return ctx.registry.answer(vm)


def _check_released(what: str, domain: libvirt.virDomain, device: Any) -> None:
    """libvirt returns from an unplug the guest has not acknowledged (a PCI
    device with no guest OS to release it) with the device still attached:
    that is no unplug, whatever libvirt's return says."""
    live = domxml.parse_domain(lv.call(f"{what}: reading the live XML", domain.XMLDesc, 0))
    if domxml.find_same_device(live, device) is not None:
        name = ", ".join(sorted(domxml.device_keys(device)))
        raise LibvirtError(f"{what}: the guest has not released <{device.tag}> {name}; the unplug stays pending")


def set_ticket(
    ctx: AgentContext,
    vm_id: str,
    password: str,
    ttl: int | None = None,
    existing_conn_action: str = "disconnect",
    params: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    if existing_conn_action not in ("disconnect", "keep", "fail"):
        raise UsageError("existingConnAction must be disconnect, keep or fail")
    if ttl is not None and not 0 <= ttl <= MAX_TICKET_TTL:
        raise UsageError(f"ttl must be from 0 to {MAX_TICKET_TTL} seconds")
    ticket_params = environment.validated(params, "ticket param")
    with ctx.registry.vm(vm_id, RUNNING) as vm:
        domain = ctx.domain(vm)
        live = domain.XMLDesc(0)
        ctx.hooks.vm("setTicket", "before_vm_set_ticket", live, vm, ticket_params)
        graphics = domxml.parse_domain(live).find("devices/graphics")
        if graphics is None:
            raise UsageError(f"VM {vm.name} has no graphics device to set a ticket on")
        for child in list(graphics):
            if child.tag != "listen":
                graphics.remove(child)
        graphics.set("passwd", password)
        if graphics.get("type") == "spice":  # VNC takes only connected='keep' (as VDSM: SPICE only)
            graphics.set("connected", existing_conn_action)
        if ttl is not None:
            until = datetime.now(timezone.utc) + timedelta(seconds=int(ttl))
            graphics.set("passwdValidTo", until.strftime("%Y-%m-%dT%H:%M:%S"))
        else:
            graphics.attrib.pop("passwdValidTo", None)
        lv.call(f"setting the ticket of VM {vm.name}", domain.updateDeviceFlags, domxml.to_string(graphics), LIVE)
        ctx.hooks.vm("setTicket", "after_vm_set_ticket", domain.XMLDesc(0), vm, ticket_params)
        return ctx.registry.answer(vm)


def set_number_of_cpus(ctx: AgentContext, vm_id: str, count: int) -> dict[str, Any]:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CPUS:
        raise UsageError(f"numberOfCpus must be an integer from 1 to {MAX_CPUS}")
    with ctx.registry.vm(vm_id, RUNNING) as vm:
        domain = ctx.domain(vm)
        ctx.hooks.vm("setNumberOfCpus", "before_set_num_of_cpus", None, vm)
        lv.call(f"setting the CPUs of VM {vm.name}", domain.setVcpusFlags, count, LIVE)
        vm = ctx.registry.follow(vm, xml=domain.XMLDesc(0))
        ctx.hooks.vm("setNumberOfCpus", "after_set_num_of_cpus", None, vm)
        return ctx.registry.answer(vm)
