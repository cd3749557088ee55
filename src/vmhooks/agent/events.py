"""What happens to VMs without an operation of ours: libvirt's lifecycle
events (a VM that stops or pauses by itself still gets its after hooks) and
recovery at start (re-attach to what libvirt still runs, after_vm_destroy
for what stopped while the agent was away)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from vmhooks import domxml, metadata
from vmhooks.agent import libvirtconn as lv
from vmhooks.agent import migration
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING
from vmhooks.errors import UsageError
from vmhooks.store import VmRecord

log = logging.getLogger("vmhooks.agent")


class LifecycleEvents:
    """libvirt's lifecycle events, handed from libvirt's event thread to a
    small pool so that thread never blocks."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vm-events")
        self._callback_id: int | None = None

    def subscribe(self) -> None:
        self._callback_id = self.ctx.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )

    def close(self) -> None:
        """Finish the events in hand, then stop listening."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._callback_id is not None and self.ctx.connected:
            try:
                self.ctx.conn.domainEventDeregisterAny(self._callback_id)
            except libvirt.libvirtError:
                pass
            self._callback_id = None

    def _on_event(self, _conn: object, domain: libvirt.virDomain, event: int, detail: int, _opaque: object) -> None:
        # Runs in libvirt's event thread: never block it, hand the work over.
        try:
            self._pool.submit(handle_event, self.ctx, domain.UUIDString(), event, detail)
        except RuntimeError:
            pass  # shutting down


# libvirt's word for why a VM stopped or paused by itself (the event's detail).
STOPPED_REASONS = {
    "SHUTDOWN": "shut down from inside the guest",
    "DESTROYED": "destroyed outside this agent",
    "CRASHED": "crashed",
    "MIGRATED": "migrated away outside this agent",
    "SAVED": "saved outside this agent",
    "FAILED": "failed: QEMU exited or was killed",
    "FROM_SNAPSHOT": "stopped by a snapshot revert",
}
SUSPENDED_REASONS = {
    "PAUSED": "paused outside this agent",
    "MIGRATED": "paused for a migration",
    "IOERROR": "paused on an I/O error",
    "WATCHDOG": "paused by its watchdog",
    "RESTORED": "paused after a restore",
    "FROM_SNAPSHOT": "paused by a snapshot",
    "API_ERROR": "paused on a libvirt error",
    "POSTCOPY": "paused for a post-copy migration",
    "POSTCOPY_FAILED": "paused: a post-copy migration failed",
}


def event_reason(event: int, detail: int) -> str:
    """`stopped: crashed`, `paused: paused on an I/O error`, ..."""
    kind, prefix, reasons = {
        libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", "VIR_DOMAIN_EVENT_STOPPED_", STOPPED_REASONS),
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("paused", "VIR_DOMAIN_EVENT_SUSPENDED_", SUSPENDED_REASONS),
        libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", "", {}),
    }.get(event, (f"event {event}", "", {}))
    for name, words in reasons.items():
        if getattr(libvirt, prefix + name, None) == detail:
            return f"{kind}: {words}"
    return kind if not reasons else f"{kind} (detail {detail})"


def handle_event(ctx: AgentContext, vm_id: str, event: int, detail: int) -> None:
    """A VM that stopped or paused by itself still gets its after hooks; our
    own operations hold the VM lock and have updated the status first. What
    the agent does about an event is an operation of its own (caller
    "libvirt"), with libvirt's reason."""
    registry, hooks = ctx.registry, ctx.hooks
    try:
        with registry.locked(vm_id):
            vm = registry.get(vm_id)
            if vm is not None and vm.status == "incoming" and event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
                # The source normally calls migrationFinish at once; wait for
                # it a while, then adopt the VM ourselves.
                ctx.schedule(ctx.migration_finish_grace, migration.adopt_if_still_incoming, ctx, vm_id)
            if vm is None or vm.status not in RUNNING:
                return
            domain = ctx.lookup(vm_id)
            reason = event_reason(event, detail)
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and not lv.is_active(domain):
                with ctx.operation("event", vm.vm_id, vm_name=vm.name, caller="libvirt", reason=reason):
                    registry.forget(vm_id)
                    hooks.vm("event", "after_vm_destroy", vm.xml, vm)
            elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and vm.status == "up" and domain is not None:
                if lv.status_of(domain) == "paused":
                    with ctx.operation("event", vm.vm_id, vm_name=vm.name, caller="libvirt", reason=reason):
                        live = domain.XMLDesc(0)
                        vm = registry.follow(vm, status="paused", xml=live)
                        hooks.vm("event", "after_vm_pause", live, vm)
            elif event == libvirt.VIR_DOMAIN_EVENT_RESUMED and vm.status == "paused" and domain is not None:
                if lv.status_of(domain) == "up":
                    with ctx.operation("event", vm.vm_id, vm_name=vm.name, caller="libvirt", reason=reason):
                        registry.follow(vm, status="up")
    except Exception:  # an event must never kill the worker
        log.exception("handling a libvirt event for VM %s", vm_id)


def recover(ctx: AgentContext) -> None:
    """Re-attach to the VMs libvirt still runs; a VM that stopped while we
    were away still gets its after_vm_destroy. Each VM is an operation of
    its own (caller "agent")."""
    for vm in ctx.registry.load():
        with ctx.operation("recover", vm.vm_id, vm_name=vm.name, caller="agent") as operation:
            operation.reason = _recover(ctx, vm)
    adopt_unknown(ctx)


def _recover(ctx: AgentContext, vm: VmRecord) -> str:
    """What recovery did with one VM, in words."""
    registry = ctx.registry
    if vm.status == "hibernated":
        if vm.save_path and Path(vm.save_path).exists():
            return "hibernated: image in place"
        registry.forget(vm.vm_id)
        return f"hibernated, but its image {vm.save_path} is gone: forgotten"
    domain = ctx.lookup(vm.vm_id)
    if lv.is_active(domain):
        assert domain is not None
        vm = registry.follow(vm, status=lv.status_of(domain), xml=domain.XMLDesc(0))
        return f"re-attached: {vm.status}"
    registry.forget(vm.vm_id)
    if vm.status in ("starting", "incoming"):
        return f"never started here ({vm.status}): forgotten, no hook"
    if vm.status == "migrating":
        return "was migrating when the agent stopped, and is no longer here"
    ctx.hooks.vm("recover", "after_vm_destroy", vm.xml, vm)
    return "stopped while the agent was away"


def adopt_unknown(ctx: AgentContext) -> None:
    """VMs libvirt runs that the agent has no record of (its state was lost
    or is new) are taken back when their XML carries Engine's metadata, as
    every VM the agent starts does: with the custom properties it holds."""
    registry = ctx.registry
    for domain in ctx.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        vm_id = domain.UUIDString().lower()
        if vm_id in registry:
            continue
        try:
            xml = domain.XMLDesc(0)
            root = domxml.parse_domain(xml)
        except (libvirt.libvirtError, UsageError) as exc:
            log.warning("VM %s: its XML cannot be read (%s): left alone", vm_id, exc)
            continue
        if root.find(f"metadata/{metadata.VM}") is None:
            continue  # not started by us or by Engine: not ours to manage
        engine = metadata.read(root)
        index = domxml.device_index(root)
        try:  # metadata written by someone else is input like any other
            custom = ctx.hooks.check_custom(engine.custom, "custom property")
            devices = {
                key: ctx.hooks.check_custom(props, "device custom property")
                for key, props in engine.devices.items()
                if key in index
            }
        except UsageError as exc:
            log.warning("VM %s: its metadata's custom properties are refused (%s): adopted without them", vm_id, exc)
            custom, devices = {}, {}
        with registry.locked(vm_id):
            if vm_id in registry:
                continue
            reason = f"adopted from libvirt (Engine metadata), custom properties {sorted(custom)}"
            with ctx.operation("recover", vm_id, vm_name=domain.name(), caller="agent", reason=reason):
                registry.put(VmRecord(vm_id, domain.name(), lv.status_of(domain), xml, custom, devices))
