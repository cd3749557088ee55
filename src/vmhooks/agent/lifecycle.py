"""A VM's life: create (with the launch flags hooks may set), pause and
continue, hibernate and dehibernate, destroy. Each operation is
before-chain -> libvirt -> after-chain under the VM's lock."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import libvirt

from vmhooks import domxml, metadata
from vmhooks.agent import libvirtconn as lv
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING
from vmhooks.errors import HookError, UsageError, WrongStateError
from vmhooks.store import VmRecord


class SimpleOperation(NamedTuple):
    """An operation that is one libvirt call on the domain, between two points."""

    before: str
    after: str
    libvirt_method: str
    allowed: frozenset[str]  # statuses it may start from
    result_status: str


SIMPLE_OPERATIONS: dict[str, SimpleOperation] = {
    "pause": SimpleOperation("before_vm_pause", "after_vm_pause", "suspend", frozenset({"up"}), "paused"),
    "cont": SimpleOperation("before_vm_cont", "after_vm_cont", "resume", frozenset({"paused"}), "up"),
}


def create(
    ctx: AgentContext,
    xml: str,
    vm_id: str | None = None,
    custom: Mapping[str, object] | None = None,
    device_custom: Mapping[str, Mapping[str, object]] | None = None,
    launch_paused: bool = False,
) -> dict[str, Any]:
    root = domxml.parse_domain(xml)
    vm_id, rewritten = domxml.ensure_uuid(root, vm_id)
    _, name = domxml.identity(root)
    if not name:
        raise UsageError("domain XML has no <name>")
    if device_custom is not None and not isinstance(device_custom, Mapping):
        raise UsageError("deviceCustom must map a device (alias, MAC or target dev) to properties")
    if custom is not None and not isinstance(custom, Mapping):
        raise UsageError("custom must map property names to values")
    devices = domxml.device_index(root)
    for key, props in (device_custom or {}).items():
        if str(key).lower() not in devices:
            raise UsageError(f"deviceCustom: no device with alias, MAC or target {key!r} in the XML")
        if not isinstance(props, Mapping):
            raise UsageError(f"deviceCustom: the properties of {key!r} must be a mapping")
    # Engine's XML carries them in <metadata>; the call's own win.
    all_custom, all_devices = metadata.merged(metadata.read(root), custom, device_custom)
    vm_custom = ctx.hooks.check_custom(all_custom, "custom property")
    checked_devices = {
        key: ctx.hooks.check_custom(props, "device custom property")
        for key, props in all_devices.items()
        if key in devices  # metadata of a device the XML no longer has: nothing to run for it
    }

    registry = ctx.registry
    with registry.locked(vm_id):
        existing = registry.get(vm_id)
        if existing is not None:
            raise WrongStateError(f"VM {existing.name} ({vm_id}) already exists ({existing.status})")
        if lv.is_active(ctx.lookup(vm_id)):
            raise WrongStateError(f"libvirt already runs a domain with uuid {vm_id}")
        vm = registry.put(VmRecord(vm_id, name, "starting", xml, vm_custom, checked_devices))
        try:
            domain = _start(ctx, vm, root, None if rewritten or checked_devices else xml, launch_paused)
        except BaseException:
            registry.forget(vm_id)
            _clear_launch_flags(ctx, vm_id)
            raise
        live = domain.XMLDesc(0)
        vm = registry.follow(vm, status=lv.status_of(domain), xml=live)
        ctx.hooks.vm("create", "after_vm_start", live, vm)
        for props, device_xml in domxml.custom_devices(live, checked_devices):
            ctx.hooks.device("create", "after_device_create", device_xml, vm, props)
        return ctx.registry.answer(vm)


def _start(ctx: AgentContext, vm: VmRecord, root: Any, xml: str | None, paused: bool) -> libvirt.virDomain:
    """before_device_create per custom device -> before_vm_start -> libvirt."""
    devices = domxml.device_index(root)
    for key, props in vm.device_custom.items():
        device = devices[key]
        result = ctx.hooks.device("create", "before_device_create", domxml.to_string(device), vm, props)
        if result.changed:
            new = domxml.parse(result.payload, "device XML")
            domxml.replace_device(root, device, new)
            devices.update(dict.fromkeys(domxml.device_keys(device), new))
    _write_launch_flags(ctx, vm.vm_id, libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    result = ctx.hooks.vm("create", "before_vm_start", xml or domxml.to_string(root), vm)
    flags = _read_launch_flags(ctx, vm.vm_id)
    _clear_launch_flags(ctx, vm.vm_id)
    final = result.payload
    started_root = domxml.parse_domain(final)
    locked = domxml.lock_graphics(started_root)  # after the hooks: they see the XML as sent
    if locked or vm.custom or vm.device_custom:
        # The properties it runs with, in Engine's metadata: dumpxml shows
        # them and a restarted agent finds them there.
        metadata.write(started_root, vm.custom, vm.device_custom, domxml.device_index(started_root))
        final = domxml.to_string(started_root)
    conn = ctx.conn
    start_paused = libvirt.VIR_DOMAIN_START_PAUSED
    if flags & start_paused and conn.getType().upper() == "TEST":
        # The test driver has no START_PAUSED; with no guest to run, starting
        # and pausing at once is the same thing.
        domain = lv.call(f"starting VM {vm.name}", conn.createXML, final, flags & ~start_paused)
        lv.call(f"pausing VM {vm.name} at start", domain.suspend)
        return domain
    return lv.call(f"starting VM {vm.name}", conn.createXML, final, flags)


def destroy(ctx: AgentContext, vm_id: str) -> dict[str, Any]:
    with ctx.registry.vm(vm_id) as vm:
        ctx.hooks.vm("destroy", "before_vm_destroy", None, vm)
        devices = domxml.custom_devices(vm.xml, vm.device_custom)
        for props, device_xml in devices:
            ctx.hooks.device("destroy", "before_device_destroy", device_xml, vm, props)
        domain = ctx.lookup(vm.vm_id)
        last_xml = vm.xml
        if lv.is_active(domain):
            assert domain is not None
            last_xml = domain.XMLDesc(0)
            try:
                domain.destroy()
            except libvirt.libvirtError as exc:
                if lv.is_active(domain):
                    raise lv.translate(f"destroying VM {vm.name}", exc) from None
        if vm.save_path:
            Path(vm.save_path).unlink(missing_ok=True)
        ctx.registry.forget(vm.vm_id)
        for props, device_xml in devices:
            ctx.hooks.device("destroy", "after_device_destroy", device_xml, vm, props)
        ctx.hooks.vm("destroy", "after_vm_destroy", last_xml, vm)
        return {"vmId": vm.vm_id, "name": vm.name, "status": "down"}


def simple(ctx: AgentContext, name: str, vm_id: str) -> dict[str, Any]:
    operation = SIMPLE_OPERATIONS[name]
    with ctx.registry.vm(vm_id, operation.allowed) as vm:
        domain = ctx.domain(vm)
        ctx.hooks.vm(name, operation.before, domain.XMLDesc(0), vm)
        lv.call(f"{name} VM {vm.name}", getattr(domain, operation.libvirt_method))
        live = domain.XMLDesc(0)
        vm = ctx.registry.follow(vm, status=operation.result_status, xml=live)
        ctx.hooks.vm(name, operation.after, live, vm)
        return ctx.registry.answer(vm)


def hibernate(ctx: AgentContext, vm_id: str) -> dict[str, Any]:
    with ctx.registry.vm(vm_id, RUNNING) as vm:
        domain = ctx.domain(vm)
        live = domain.XMLDesc(0)
        ctx.hooks.vm("hibernate", "before_vm_hibernate", live, vm)
        path = ctx.save_dir / f"{vm.vm_id}.img"
        lv.call(f"hibernating VM {vm.name}", domain.save, str(path))
        vm = ctx.registry.follow(vm, status="hibernated", xml=live, save_path=str(path))
        ctx.hooks.vm("hibernate", "after_vm_hibernate", live, vm)
        return ctx.registry.answer(vm)


def dehibernate(ctx: AgentContext, vm_id: str) -> dict[str, Any]:
    with ctx.registry.vm(vm_id, frozenset({"hibernated"})) as vm:
        assert vm.save_path is not None
        path = vm.save_path
        conn = ctx.conn
        saved = lv.call(f"reading the hibernation image of {vm.name}", conn.saveImageGetXMLDesc, path, 0)
        params = {"FROM_SNAPSHOT": False}
        result = ctx.hooks.vm("dehibernate", "before_vm_dehibernate", saved, vm, params)
        edited = result.payload if result.changed else None  # honoured, unlike upstream
        lv.call(f"restoring VM {vm.name}", conn.restoreFlags, path, edited, 0)
        domain = ctx.domain(vm)
        live = domain.XMLDesc(0)
        Path(path).unlink(missing_ok=True)
        vm = ctx.registry.follow(vm, status=lv.status_of(domain), xml=live, save_path=None)
        ctx.hooks.vm("dehibernate", "after_vm_dehibernate", live, vm, params)
        return ctx.registry.answer(vm)


# -- launch flags (hooking.load/dump_vm_launch_flags_from_file) ---------------


def _flags_path(ctx: AgentContext, vm_id: str) -> Path:
    return ctx.flags_dir / vm_id


def _write_launch_flags(ctx: AgentContext, vm_id: str, flags: int) -> None:
    _flags_path(ctx, vm_id).write_text(f"{flags}\n")


def _read_launch_flags(ctx: AgentContext, vm_id: str) -> int:
    try:
        text = _flags_path(ctx, vm_id).read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        return int(text or 0)
    except ValueError:
        raise HookError(f"before_vm_start: a hook wrote invalid launch flags {text!r}") from None


def _clear_launch_flags(ctx: AgentContext, vm_id: str) -> None:
    _flags_path(ctx, vm_id).unlink(missing_ok=True)
