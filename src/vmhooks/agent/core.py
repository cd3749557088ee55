"""The host agent: the VMs it runs, and every lifecycle operation as
before-hook chain -> libvirt call -> after-hook chain (hook-points.md).

Operations on one VM are serialised by that VM's lock; operations on
different VMs run in parallel in the callers' threads.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import libvirt

from vmhooks import __version__, discovery, environment, properties
from vmhooks.agent import domxml
from vmhooks.agent import libvirtconn as lv
from vmhooks.catalogue import RECORD_DIR_NAME, installed_property_rules
from vmhooks.client import Client, client_tls_context
from vmhooks.config import AgentSettings, port_range, split_address
from vmhooks.errors import HookError, LibvirtError, NoSuchVmError, UsageError, VmhooksError, WrongStateError
from vmhooks.runner import ChainResult, RunnerConfig, run_chain
from vmhooks.store import Store, VmRecord

log = logging.getLogger("vmhooks.agent")

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


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

RUNNING = frozenset({"up", "paused"})
MAX_TICKET_TTL = 10 * 365 * 86400  # seconds
MAX_CPUS = 4096
PRUNE_EVERY = 1000  # chains recorded between two prunings of old history


class Agent:
    # Seconds a destination waits for the source's migrationFinish after
    # libvirt reports the VM running here, before adopting it on its own.
    migration_finish_grace = 30.0
    # Seconds an announced incoming VM may take to show up in libvirt.
    incoming_timeout = 300.0

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        # Hook payloads live under the run dir: tmpfs on a real host (/run),
        # so a chain's private directory costs no disk I/O.
        self.payload_dir = settings.run_dir / "payloads"
        self.flags_dir = settings.run_dir / "launch-flags"
        # The socket group must be able to reach the socket through the run dir.
        run_mode = 0o711 if settings.socket_group else 0o700
        for directory, mode in ((self.state_dir, 0o700), (settings.run_dir, run_mode),
                                (self.payload_dir, 0o700), (self.flags_dir, 0o700)):  # fmt: skip
            _private_directory(directory, mode)
        # libvirtd writes the images: a session daemon as another user needs a
        # directory of its own, so it can be set apart from the private state.
        self.save_dir = settings.save_dir or self.state_dir / "hibernation"
        self.save_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = Store(self.state_dir / "vmhooks.db")
        self.conn: libvirt.virConnect | None = None
        self._vms: dict[str, VmRecord] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._registry_lock = threading.Lock()
        self._events = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vm-events")
        self._callback_id: int | None = None
        self._chains_recorded = itertools.count(1)
        self._base_env = dict(os.environ)  # one snapshot: copying os.environ per chain costs
        self._rules_cache: tuple[int | None, properties.PropertyRules | None] | None = None
        self._property_rules()  # a bad --properties spec fails the start, not the first VM

    # -- life of the agent ---------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash, run before_vdsm_start, connect, re-attach."""
        _empty_directory(self.payload_dir)  # payload dirs of a run that crashed
        _empty_directory(self.flags_dir)
        self._prune_history()
        self._host_chain("start", "before_vdsm_start", None)
        self.conn = lv.open_connection(self.settings.libvirt_uri)
        self._callback_id = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle_event, None
        )
        self._recover()

    def stop(self) -> None:
        """After the API stopped serving: run after_vdsm_stop, release everything."""
        self._events.shutdown(wait=True, cancel_futures=True)
        if self.conn is not None:
            if self._callback_id is not None:
                try:
                    self.conn.domainEventDeregisterAny(self._callback_id)
                except libvirt.libvirtError:
                    pass
            self.conn.close()
            self.conn = None
        self._host_chain("stop", "after_vdsm_stop", None)
        self.store.close()

    def _prune_history(self) -> None:
        gone = self.store.prune(time.time() - self.settings.history_days * 86400)
        if gone:
            log.info("forgot %d hook chains older than %g days", gone, self.settings.history_days)

    def _recover(self) -> None:
        """Re-attach to the VMs libvirt still runs; a VM that stopped while we
        were away still gets its after_vm_destroy."""
        for vm in self.store.vms():
            self._vms[vm.vm_id] = vm
            if vm.status == "hibernated":
                if vm.save_path and Path(vm.save_path).exists():
                    continue
                log.warning("VM %s: hibernation image %s is gone", vm.vm_id, vm.save_path)
                self._forget(vm.vm_id)
                continue
            domain = lv.lookup(self._conn, vm.vm_id)
            if lv.is_active(domain):
                assert domain is not None
                self._update(vm, status=lv.status_of(domain), xml=domain.XMLDesc(0))
                log.info("VM %s (%s): re-attached", vm.vm_id, vm.name)
            elif vm.status in ("starting", "incoming"):
                self._forget(vm.vm_id)  # it never started here: no hook to run
            elif vm.status == "migrating":
                log.warning("VM %s (%s) was migrating when the agent stopped: it is no longer here",
                            vm.vm_id, vm.name)  # fmt: skip
                self._forget(vm.vm_id)
            else:
                log.info("VM %s (%s): stopped while the agent was away", vm.vm_id, vm.name)
                self._forget(vm.vm_id)
                self._vm_chain("recover", "after_vm_destroy", vm.xml, vm)

    @property
    def _conn(self) -> libvirt.virConnect:
        if self.conn is None:
            raise WrongStateError("the agent is not connected to libvirt")
        return self.conn

    # -- registry ------------------------------------------------------------

    def _lock_for(self, vm_id: str) -> threading.RLock:
        with self._registry_lock:
            return self._locks.setdefault(vm_id, threading.RLock())

    @contextmanager
    def _vm(self, vm_id: object, allowed: frozenset[str] | None = None) -> Iterator[VmRecord]:
        """Hold the VM's lock for the whole operation and yield its record."""
        key = domxml.normalise_uuid(vm_id)
        if key not in self._vms:  # no lock is made for ids we never had
            raise NoSuchVmError(f"no VM with id {key}")
        with self._lock_for(key):
            vm = self._vms.get(key)
            if vm is None:
                raise NoSuchVmError(f"no VM with id {key}")
            if allowed is not None and vm.status not in allowed:
                raise WrongStateError(f"VM {vm.name} ({key}) is {vm.status}")
            yield vm

    def _update(self, vm: VmRecord, **changes: Any) -> VmRecord:
        vm = vm._replace(**changes)
        self._vms[vm.vm_id] = vm
        self.store.put_vm(vm)
        return vm

    def _forget(self, vm_id: str) -> None:
        self._vms.pop(vm_id, None)
        self.store.delete_vm(vm_id)

    def _domain(self, vm: VmRecord) -> libvirt.virDomain:
        domain = lv.lookup(self._conn, vm.vm_id)
        if domain is None:
            raise WrongStateError(f"VM {vm.name} ({vm.vm_id}) is not known to libvirt")
        return domain

    # -- running chains ------------------------------------------------------

    def _runner_config(self) -> RunnerConfig:
        settings = self.settings
        return RunnerConfig(
            hooks_dir=settings.hooks_dir,
            timeout=settings.hook_timeout,
            timeouts=settings.hook_timeouts,
            allow_unsafe=settings.allow_unsafe_hooks,
            work_dir=self.payload_dir,
            run_dir=settings.run_dir,
            base_env=self._base_env,
            property_rules=self._property_rules(),
        )

    def _property_rules(self) -> properties.PropertyRules | None:
        """Installed hooks' and the admin's rules, re-read only when an
        install or uninstall changed the catalogue's records."""
        try:
            stamp: int | None = (self.settings.hooks_dir / RECORD_DIR_NAME).stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = self._rules_cache
        if cached is None or cached[0] != stamp:
            rules = properties.combine(
                installed_property_rules(self.settings.hooks_dir), properties.parse_user_defined(self.settings.properties)
            )
            cached = (stamp, rules)
            self._rules_cache = cached
        return cached[1]

    def _run(
        self,
        operation: str,
        point: str,
        payload: Any,
        vm_id: str | None,
        custom: Mapping[str, str] | None,
        params: Mapping[str, object] | None = None,
    ) -> ChainResult:
        """One chain, recorded in the history; raises HookError where it aborts."""
        result = run_chain(point, payload, self._runner_config(), params=params, custom=custom, vm_id=vm_id)
        self.store.record_chain(operation, vm_id, result)
        if result.scripts and next(self._chains_recorded) % PRUNE_EVERY == 0:
            self._prune_history()
        if result.failed:
            log.warning("%s", result.error_message())
        result.raise_if_aborting()
        return result

    def _host_chain(self, operation: str, point: str, payload: Any) -> ChainResult:
        return self._run(operation, point, payload, None, None)

    def _vm_chain(
        self, operation: str, point: str, payload: Any, vm: VmRecord, params: Mapping[str, object] | None = None
    ) -> ChainResult:
        return self._run(operation, point, payload, vm.vm_id, vm.custom, params)

    def _device_chain(
        self, operation: str, point: str, device_xml: str, vm: VmRecord, custom: Mapping[str, str]
    ) -> ChainResult:
        return self._run(operation, point, device_xml, vm.vm_id, custom)

    def _check_custom(self, values: object, origin: str) -> dict[str, str]:
        """Names, values and declared regexes, checked before anything runs."""
        checked = environment.validated(values, origin)  # type: ignore[arg-type]
        rules = self._property_rules()
        if rules is not None:
            properties.check(checked, rules, origin)
        return checked

    # -- create / destroy ----------------------------------------------------

    def create(
        self,
        xml: str,
        vmId: str | None = None,  # noqa: N803 (API names)
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,  # noqa: N803
        launchPaused: bool = False,  # noqa: N803
    ) -> dict[str, Any]:
        root = domxml.parse_domain(xml)
        rewritten = root.find("uuid") is None
        vm_id = domxml.ensure_uuid(root, vmId)
        _, name = domxml.identity(root)
        if not name:
            raise UsageError("domain XML has no <name>")
        vm_custom = self._check_custom(custom, "custom property")
        device_custom: dict[str, dict[str, str]] = {}
        if deviceCustom is not None and not isinstance(deviceCustom, Mapping):
            raise UsageError("deviceCustom must map a device (alias, MAC or target dev) to properties")
        for key, props in (deviceCustom or {}).items():
            if domxml.find_device(root, str(key)) is None:
                raise UsageError(f"deviceCustom: no device with alias, MAC or target {key!r} in the XML")
            device_custom[str(key).lower()] = self._check_custom(props, "device custom property")

        with self._lock_for(vm_id):
            existing = self._vms.get(vm_id)
            if existing is not None:
                raise WrongStateError(f"VM {existing.name} ({vm_id}) already exists ({existing.status})")
            if lv.is_active(lv.lookup(self._conn, vm_id)):
                raise WrongStateError(f"libvirt already runs a domain with uuid {vm_id}")
            vm = self._update(VmRecord(vm_id, name, "starting", xml, vm_custom, device_custom))
            try:
                domain = self._start(vm, root, None if rewritten or device_custom else xml, launchPaused)
            except BaseException:
                self._forget(vm_id)
                self._clear_launch_flags(vm_id)
                raise
            live = domain.XMLDesc(0)
            vm = self._update(vm, status=lv.status_of(domain), xml=live)
            self._vm_chain("create", "after_vm_start", live, vm)
            live_root = domxml.parse_domain(live)
            for key, props in device_custom.items():
                device = domxml.find_device(live_root, key)
                if device is not None:
                    self._device_chain("create", "after_device_create", domxml.to_string(device), vm, props)
            return self._summary(vm)

    def _start(self, vm: VmRecord, root: Any, xml: str | None, paused: bool) -> libvirt.virDomain:
        """before_device_create per custom device -> before_vm_start -> libvirt."""
        for key, props in vm.device_custom.items():
            device = domxml.find_device(root, key)
            assert device is not None
            result = self._device_chain("create", "before_device_create", domxml.to_string(device), vm, props)
            if result.changed:
                domxml.replace_device(root, device, domxml.parse(result.payload, "device XML"))
        self._write_launch_flags(vm.vm_id, libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        result = self._vm_chain("create", "before_vm_start", xml or domxml.to_string(root), vm)
        flags = self._read_launch_flags(vm.vm_id)
        self._clear_launch_flags(vm.vm_id)
        final = result.payload
        started_root = domxml.parse_domain(final)
        if domxml.lock_graphics(started_root):  # after the hooks: they see the XML as sent
            final = domxml.to_string(started_root)
        start_paused = libvirt.VIR_DOMAIN_START_PAUSED
        if flags & start_paused and self._conn.getType().upper() == "TEST":
            # The test driver has no START_PAUSED; with no guest to run, starting
            # and pausing at once is the same thing.
            domain = lv.call(f"starting VM {vm.name}", self._conn.createXML, final, flags & ~start_paused)
            lv.call(f"pausing VM {vm.name} at start", domain.suspend)
            return domain
        return lv.call(f"starting VM {vm.name}", self._conn.createXML, final, flags)

    def destroy(self, vmId: str) -> dict[str, Any]:  # noqa: N803
        with self._vm(vmId) as vm:
            self._vm_chain("destroy", "before_vm_destroy", None, vm)
            devices = self._custom_devices(vm)
            for props, device_xml in devices:
                self._device_chain("destroy", "before_device_destroy", device_xml, vm, props)
            domain = lv.lookup(self._conn, vm.vm_id)
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
            self._forget(vm.vm_id)
            for props, device_xml in devices:
                self._device_chain("destroy", "after_device_destroy", device_xml, vm, props)
            self._vm_chain("destroy", "after_vm_destroy", last_xml, vm)
            return {"vmId": vm.vm_id, "name": vm.name, "status": "down"}

    def _custom_devices(self, vm: VmRecord) -> list[tuple[dict[str, str], str]]:
        """(properties, device XML) of each device with custom properties."""
        if not vm.device_custom:
            return []
        root = domxml.parse_domain(vm.xml)
        found = []
        for key, props in vm.device_custom.items():
            device = domxml.find_device(root, key)
            if device is not None:
                found.append((props, domxml.to_string(device)))
        return found

    # -- launch flags (hooking.load/dump_vm_launch_flags_from_file) -----------

    def _flags_path(self, vm_id: str) -> Path:
        return self.flags_dir / vm_id

    def _write_launch_flags(self, vm_id: str, flags: int) -> None:
        self._flags_path(vm_id).write_text(f"{flags}\n")

    def _read_launch_flags(self, vm_id: str) -> int:
        try:
            text = self._flags_path(vm_id).read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            return int(text or 0)
        except ValueError:
            raise HookError(f"before_vm_start: a hook wrote invalid launch flags {text!r}") from None

    def _clear_launch_flags(self, vm_id: str) -> None:
        self._flags_path(vm_id).unlink(missing_ok=True)

    # -- simple state changes ------------------------------------------------

    def pause(self, vmId: str) -> dict[str, Any]:  # noqa: N803
        return self._simple("pause", vmId)

    def cont(self, vmId: str) -> dict[str, Any]:  # noqa: N803
        return self._simple("cont", vmId)

    def _simple(self, name: str, vm_id: str) -> dict[str, Any]:
        operation = SIMPLE_OPERATIONS[name]
        with self._vm(vm_id, operation.allowed) as vm:
            domain = self._domain(vm)
            self._vm_chain(name, operation.before, domain.XMLDesc(0), vm)
            lv.call(f"{name} VM {vm.name}", getattr(domain, operation.libvirt_method))
            live = domain.XMLDesc(0)
            vm = self._update(vm, status=operation.result_status, xml=live)
            self._vm_chain(name, operation.after, live, vm)
            return self._summary(vm)

    def hibernate(self, vmId: str) -> dict[str, Any]:  # noqa: N803
        with self._vm(vmId, RUNNING) as vm:
            domain = self._domain(vm)
            live = domain.XMLDesc(0)
            self._vm_chain("hibernate", "before_vm_hibernate", live, vm)
            path = self.save_dir / f"{vm.vm_id}.img"
            lv.call(f"hibernating VM {vm.name}", domain.save, str(path))
            vm = self._update(vm, status="hibernated", xml=live, save_path=str(path))
            self._vm_chain("hibernate", "after_vm_hibernate", live, vm)
            return self._summary(vm)

    def dehibernate(self, vmId: str) -> dict[str, Any]:  # noqa: N803
        with self._vm(vmId, frozenset({"hibernated"})) as vm:
            assert vm.save_path is not None
            path = vm.save_path
            saved = lv.call(f"reading the hibernation image of {vm.name}", self._conn.saveImageGetXMLDesc, path, 0)
            params = {"FROM_SNAPSHOT": False}
            result = self._vm_chain("dehibernate", "before_vm_dehibernate", saved, vm, params)
            edited = result.payload if result.changed else None  # honoured, unlike upstream
            lv.call(f"restoring VM {vm.name}", self._conn.restoreFlags, path, edited, 0)
            domain = self._domain(vm)
            live = domain.XMLDesc(0)
            Path(path).unlink(missing_ok=True)
            vm = self._update(vm, status=lv.status_of(domain), xml=live, save_path=None)
            self._vm_chain("dehibernate", "after_vm_dehibernate", live, vm, params)
            return self._summary(vm)

    def setTicket(  # noqa: N802
        self,
        vmId: str,  # noqa: N803
        password: str,
        ttl: int | None = None,
        existingConnAction: str = "disconnect",  # noqa: N803
        params: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        if existingConnAction not in ("disconnect", "keep", "fail"):
            raise UsageError("existingConnAction must be disconnect, keep or fail")
        if ttl is not None and not 0 <= ttl <= MAX_TICKET_TTL:
            raise UsageError(f"ttl must be from 0 to {MAX_TICKET_TTL} seconds")
        ticket_params = environment.validated(params, "ticket param")
        with self._vm(vmId, RUNNING) as vm:
            domain = self._domain(vm)
            live = domain.XMLDesc(0)
            self._vm_chain("setTicket", "before_vm_set_ticket", live, vm, ticket_params)
            graphics = domxml.parse_domain(live).find("devices/graphics")
            if graphics is None:
                raise UsageError(f"VM {vm.name} has no graphics device to set a ticket on")
            for child in list(graphics):
                if child.tag != "listen":
                    graphics.remove(child)
            graphics.set("passwd", password)
            if graphics.get("type") == "spice":  # VNC takes only connected='keep' (as VDSM: SPICE only)
                graphics.set("connected", existingConnAction)
            if ttl is not None:
                until = datetime.now(timezone.utc) + timedelta(seconds=int(ttl))
                graphics.set("passwdValidTo", until.strftime("%Y-%m-%dT%H:%M:%S"))
            else:
                graphics.attrib.pop("passwdValidTo", None)
            lv.call(f"setting the ticket of VM {vm.name}", domain.updateDeviceFlags, domxml.to_string(graphics), LIVE)
            self._vm_chain("setTicket", "after_vm_set_ticket", domain.XMLDesc(0), vm, ticket_params)
            return self._summary(vm)

    def setNumberOfCpus(self, vmId: str, numberOfCpus: int) -> dict[str, Any]:  # noqa: N802,N803
        if not isinstance(numberOfCpus, int) or isinstance(numberOfCpus, bool) or not 1 <= numberOfCpus <= MAX_CPUS:
            raise UsageError(f"numberOfCpus must be an integer from 1 to {MAX_CPUS}")
        with self._vm(vmId, RUNNING) as vm:
            domain = self._domain(vm)
            self._vm_chain("setNumberOfCpus", "before_set_num_of_cpus", None, vm)
            lv.call(f"setting the CPUs of VM {vm.name}", domain.setVcpusFlags, numberOfCpus, LIVE)
            vm = self._update(vm, xml=domain.XMLDesc(0))
            self._vm_chain("setNumberOfCpus", "after_set_num_of_cpus", None, vm)
            return self._summary(vm)

    # -- devices ---------------------------------------------------------------

    def device_operation(
        self, name: str, vmId: str, xml: str, custom: Mapping[str, object] | None = None  # noqa: N803
    ) -> dict[str, Any]:
        operation = DEVICE_OPERATIONS[name]
        device = domxml.parse(xml, "device XML")
        if operation.tag is not None and device.tag != operation.tag:
            raise UsageError(f"{name} takes a <{operation.tag}> element, not <{device.tag}>")
        new_custom = self._check_custom(custom, "device custom property") if custom else None
        with self._vm(vmId, RUNNING) as vm:
            domain = self._domain(vm)
            keys = domxml.device_keys(device)
            known = next((vm.device_custom[k] for k in keys if k in vm.device_custom), {})
            props = new_custom if new_custom is not None else known
            try:
                result = self._device_chain(name, operation.before, xml, vm, props)
            except HookError:
                if operation.fail and operation.fail_on_refusal:
                    self._device_chain(name, operation.fail, xml, vm, props)
                raise
            device_xml = result.payload
            try:
                lv.call(f"{name} on VM {vm.name}", getattr(domain, operation.libvirt_method), device_xml, LIVE)
                if operation.libvirt_method == "detachDeviceFlags":
                    _check_released(f"{name} on VM {vm.name}", domain, domxml.parse(device_xml, "device XML"))
            except Exception:
                if operation.fail:
                    self._device_chain(name, operation.fail, device_xml, vm, props)
                raise
            device_custom = dict(vm.device_custom)
            keys |= domxml.device_keys(domxml.parse(device_xml, "device XML"))
            for key in keys:
                device_custom.pop(key, None)
            if operation.remember and props:
                device_custom[sorted(keys)[0] if keys else "device"] = dict(props)
            vm = self._update(vm, xml=domain.XMLDesc(0), device_custom=device_custom)
            self._device_chain(name, operation.after, device_xml, vm, props)
            return self._summary(vm)

    # -- migration -------------------------------------------------------------

    def migrate(self, vmId: str, dst: str) -> dict[str, Any]:  # noqa: N803
        """Live-migrate to the agent at `dst` (HOST:PORT, mutual TLS).

        Source hooks may refuse; the destination's hooks may refuse or edit
        the XML it will run; libvirt migrates peer to peer. Any failure
        leaves the VM running here and says why."""
        peer = self._peer(dst)
        with self._vm(vmId, RUNNING) as vm:
            domain = self._domain(vm)
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
            self._vm_chain("migrate", "before_vm_migrate_source", xml, vm)
            devices = self._custom_devices(vm)
            for props, device_xml in devices:
                self._device_chain("migrate", "before_device_migrate_source", device_xml, vm, props)
            offer = peer.call(
                "VM.migrationCreate", vmId=vm.vm_id, xml=xml, custom=vm.custom, deviceCustom=vm.device_custom
            )
            try:
                _check_offer(offer, vm)
            except WrongStateError:
                self._tell_peer(peer, vm.vm_id, False)
                raise
            vm = self._update(vm, status="migrating")
            try:
                params = {libvirt.VIR_MIGRATE_PARAM_URI: _reachable_uri(offer["migrationUri"], dst)}
                if offer.get("listenAddress"):  # else the destination's QEMU listens on every address
                    params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = offer["listenAddress"]
                if offer["xml"] != xml:
                    params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = offer["xml"]  # honoured, unlike upstream
                flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                if domain.isPersistent():
                    flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                lv.call(f"migrating VM {vm.name} to {dst}", domain.migrateToURI3, offer["libvirtUri"], params, flags)
            except BaseException:
                self._tell_peer(peer, vm.vm_id, False)
                if lv.is_active(domain):
                    self._update(vm, status=lv.status_of(domain))
                else:  # it left this host all the same: nothing of it is ours to manage
                    log.warning("VM %s: migration failed, and the VM is no longer on this host", vm.vm_id)
                    self._forget(vm.vm_id)
                    self._vm_chain("migrate", "after_vm_destroy", xml, vm)
                raise
            self._forget(vm.vm_id)
            for props, device_xml in devices:
                self._device_chain("migrate", "after_device_migrate_source", device_xml, vm, props)
            self._vm_chain("migrate", "after_vm_migrate_source", xml, vm)
            finished = self._tell_peer(peer, vm.vm_id, True)
            return {"vmId": vm.vm_id, "name": vm.name, "status": "migrated", "destination": dst,
                    "destinationStatus": finished.get("status") if finished else None}  # fmt: skip

    def _peer(self, address: str) -> Client:
        settings = self.settings
        split_address(address, "dst")
        if not (settings.tls_cert and settings.tls_key and settings.tls_ca):
            raise UsageError("migration needs this agent's --tls-cert, --tls-key and --tls-ca")
        context = client_tls_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
        return Client(address=address, tls=context)

    def _tell_peer(self, peer: Client, vm_id: str, success: bool) -> dict[str, Any] | None:
        try:
            return peer.call("VM.migrationFinish", vmId=vm_id, success=success)
        except VmhooksError as exc:
            log.error("VM %s: telling the destination the migration %s failed: %s",
                      vm_id, "succeeded" if success else "failed", exc)  # fmt: skip
            return None

    def migrationCreate(  # noqa: N802
        self,
        vmId: str,  # noqa: N803
        xml: str,
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,  # noqa: N803
    ) -> dict[str, Any]:
        """Destination side, before libvirt migrates: run the destination
        hooks and say where and with which XML to migrate."""
        root = domxml.parse_domain(xml)
        vm_id = domxml.ensure_uuid(root, vmId)
        _, name = domxml.identity(root)
        vm_custom = self._check_custom(custom, "custom property")
        device_custom = {
            str(key).lower(): self._check_custom(props, "device custom property")
            for key, props in (deviceCustom or {}).items()
        }
        lock = self._lock_for(vm_id)
        if not lock.acquire(blocking=False):  # e.g. a migration from this very host
            raise WrongStateError(f"VM {vm_id} is busy on this host")
        try:
            return self._create_incoming(vm_id, name or vm_id, xml, vm_custom, device_custom)
        finally:
            lock.release()

    def _create_incoming(
        self, vm_id: str, name: str, xml: str, vm_custom: dict[str, str], device_custom: dict[str, dict[str, str]]
    ) -> dict[str, Any]:
        if vm_id in self._vms or lv.is_active(lv.lookup(self._conn, vm_id)):
            raise WrongStateError(f"VM {vm_id} already runs on this host")
        vm = self._update(VmRecord(vm_id, name, "incoming", xml, vm_custom, device_custom))
        try:
            result = self._vm_chain("migrationCreate", "before_vm_migrate_destination", xml, vm)
            for props, device_xml in self._custom_devices(vm):
                self._device_chain("migrationCreate", "before_device_migrate_destination", device_xml, vm, props)
            address = self._migration_address()
        except BaseException:
            self._forget(vm_id)
            raise
        self._update(vm, xml=result.payload)
        self._schedule(self.incoming_timeout, self._expire_incoming, vm_id)
        return {
            "xml": result.payload,
            "libvirtUri": self.settings.migration_libvirt_uri or self.settings.libvirt_uri,
            "migrationUri": f"tcp://{address}",
            "listenAddress": split_address(address)[0],  # where the port was found free
        }

    def _expire_incoming(self, vm_id: str) -> None:
        """An incoming VM that never arrived (the source died before libvirt
        started) is dropped; one still arriving is given more time."""
        try:
            with self._lock_for(vm_id):
                vm = self._vms.get(vm_id)
                if vm is None or vm.status != "incoming":
                    return
                if lv.lookup(self._conn, vm_id) is not None:
                    self._schedule(self.incoming_timeout, self._expire_incoming, vm_id)
                    return
                log.warning("VM %s: the announced migration never arrived; dropping it", vm_id)
                self._forget(vm_id)
        except Exception:
            log.exception("expiring incoming VM %s", vm_id)

    def _schedule(self, seconds: float, function: Any, *args: Any) -> None:
        timer = threading.Timer(seconds, function, args)
        timer.daemon = True
        timer.start()

    def migrationFinish(self, vmId: str, success: bool) -> dict[str, Any]:  # noqa: N802,N803
        """Destination side, after libvirt: adopt the VM and run the after hooks."""
        with self._vm(vmId, frozenset({"incoming"}) | RUNNING) as vm:
            if vm.status in RUNNING:
                return self._summary(vm)  # already adopted when libvirt said it arrived
            domain = lv.lookup(self._conn, vm.vm_id)
            if not lv.is_active(domain):
                self._forget(vm.vm_id)
                return {"vmId": vm.vm_id, "name": vm.name, "status": "down"}
            assert domain is not None
            if not success:  # libvirt runs it here all the same: manage it, do not orphan it
                log.warning("VM %s: the source reports a failed migration, but it runs here", vm.vm_id)
            return self._summary(self._adopt(vm, domain, "migrationFinish"))

    def _adopt(self, vm: VmRecord, domain: libvirt.virDomain, operation: str) -> VmRecord:
        live = domain.XMLDesc(0)
        vm = self._update(vm, status=lv.status_of(domain), xml=live)
        for props, device_xml in self._custom_devices(vm):
            self._device_chain(operation, "after_device_migrate_destination", device_xml, vm, props)
        self._vm_chain(operation, "after_vm_migrate_destination", live, vm)
        return vm

    def _adopt_if_still_incoming(self, vm_id: str) -> None:
        """The source never said how its migration ended (it died, or the
        network did): libvirt says the VM arrived, so take it over."""
        try:
            with self._lock_for(vm_id):
                vm = self._vms.get(vm_id)
                domain = lv.lookup(self._conn, vm_id) if vm is not None and vm.status == "incoming" else None
                if vm is not None and domain is not None and lv.is_active(domain):
                    log.warning("VM %s: migrated in, but the source never finished it: adopting it", vm_id)
                    self._adopt(vm, domain, "event")
        except Exception:
            log.exception("adopting incoming VM %s", vm_id)

    def _migration_address(self) -> str:
        """HOST:PORT where this host's QEMU will listen for the incoming VM."""
        settings = self.settings
        host = settings.migration_address or (split_address(settings.listen)[0] if settings.listen else "127.0.0.1")
        for port in port_range(settings.migration_ports):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise WrongStateError(f"no free migration port in {settings.migration_ports} on {host}")

    # -- stats and capabilities ------------------------------------------------

    def getStats(self, vmId: str) -> dict[str, Any]:  # noqa: N802,N803
        with self._vm(vmId) as vm:
            self._vm_chain("getStats", "before_get_vm_stats", {}, vm)
            result = self._vm_chain("getStats", "after_get_vm_stats", [self._vm_stats(vm)], vm)
            return {"statsList": result.payload}

    def getAllVmStats(self) -> list[Any]:  # noqa: N802
        self._host_chain("getAllVmStats", "before_get_all_vm_stats", {})
        stats = [self._vm_stats(vm) for vm in list(self._vms.values())]
        return self._host_chain("getAllVmStats", "after_get_all_vm_stats", stats).payload

    def _vm_stats(self, vm: VmRecord) -> dict[str, Any]:
        stats: dict[str, Any] = {"vmId": vm.vm_id, "vmName": vm.name, "status": vm.status}
        domain = lv.lookup(self._conn, vm.vm_id) if vm.status in RUNNING else None
        if domain is not None:
            try:
                state, max_mem, memory, vcpus, cpu_time = domain.info()
            except libvirt.libvirtError:
                return stats
            stats.update(
                {"memoryKiB": memory, "maxMemoryKiB": max_mem, "vcpuCount": vcpus, "cpuTimeNs": cpu_time}
            )
        return stats

    def getHostStats(self) -> dict[str, Any]:  # noqa: N802
        self._host_chain("getStats", "before_get_stats", {})
        model, memory_mib, cpus, mhz, *_ = lv.call("reading host info", self._conn.getInfo)
        statuses = [vm.status for vm in list(self._vms.values())]  # a snapshot: others add and remove
        stats = {
            "cpuModel": model,
            "cpuCount": cpus,
            "cpuMHz": mhz,
            "memTotalMiB": memory_mib,
            "vmCount": len(statuses),
            "vmActive": sum(status in RUNNING for status in statuses),
            "time": time.time(),
        }
        return self._host_chain("getStats", "after_get_stats", stats).payload

    def getCapabilities(self) -> dict[str, Any]:  # noqa: N802
        self._host_chain("getCapabilities", "before_get_caps", {})
        conn = self._conn
        model, memory_mib, cpus, *_ = lv.call("reading host info", conn.getInfo)
        caps = {
            "hostname": socket.gethostname(),
            "version": __version__,
            "libvirtUri": self.settings.libvirt_uri,
            "libvirtVersion": _version_string(lv.call("reading the libvirt version", conn.getLibVersion)),
            "hypervisor": lv.call("reading the hypervisor type", conn.getType),
            "hostUUID": _host_uuid(conn),
            "cpuModel": model,
            "cpuCores": cpus,
            "memSizeMiB": memory_mib,
            "hooks": self.hooks_inventory(),
        }
        return self._host_chain("getCapabilities", "after_get_caps", caps).payload

    def getXML(self, vmId: str) -> str:  # noqa: N802,N803
        """The live domain XML of a running VM, else the last one known."""
        with self._vm(vmId) as vm:
            domain = lv.lookup(self._conn, vm.vm_id) if vm.status in RUNNING else None
            return domain.XMLDesc(0) if domain is not None else vm.xml

    def hooks_inventory(self) -> dict[str, dict[str, dict[str, str]]]:
        """`{point: {script: {"checksum": sha256}}}` of the installed hooks."""
        return discovery.inventory(self.settings.hooks_dir)

    def list_vms(self) -> list[dict[str, Any]]:
        return [self._summary(vm) for vm in sorted(self._vms.values(), key=lambda v: v.name)]

    def history(self, vmId: str | None = None, point: str | None = None, limit: int = 100) -> list[dict[str, Any]]:  # noqa: N803
        vm_id = domxml.normalise_uuid(vmId) if vmId is not None else None
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise UsageError("limit must be an integer from 1 to 10000")
        return self.store.history(vm_id, point, limit)

    @staticmethod
    def _summary(vm: VmRecord) -> dict[str, Any]:
        return {"vmId": vm.vm_id, "name": vm.name, "status": vm.status, "custom": vm.custom}

    # -- libvirt lifecycle events ------------------------------------------------

    def _on_lifecycle_event(self, _conn: object, domain: libvirt.virDomain, event: int, detail: int, _opaque: object) -> None:
        # Runs in libvirt's event thread: never block it, hand the work over.
        try:
            self._events.submit(self._handle_event, domain.UUIDString(), event, detail)
        except RuntimeError:
            pass  # shutting down

    def _handle_event(self, vm_id: str, event: int, detail: int) -> None:
        """A VM that stopped or paused by itself still gets its after hooks;
        our own operations hold the VM lock and have updated the status first."""
        try:
            with self._lock_for(vm_id):
                vm = self._vms.get(vm_id)
                if vm is not None and vm.status == "incoming" and event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
                    # The source normally calls migrationFinish at once; wait for
                    # it a while, then adopt the VM ourselves.
                    self._schedule(self.migration_finish_grace, self._adopt_if_still_incoming, vm_id)
                if vm is None or vm.status not in RUNNING:
                    return
                domain = lv.lookup(self._conn, vm_id)
                if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and not lv.is_active(domain):
                    log.info("VM %s (%s) stopped by itself", vm.vm_id, vm.name)
                    self._forget(vm_id)
                    self._vm_chain("event", "after_vm_destroy", vm.xml, vm)
                elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and vm.status == "up" and domain is not None:
                    if lv.status_of(domain) == "paused":
                        live = domain.XMLDesc(0)
                        vm = self._update(vm, status="paused", xml=live)
                        self._vm_chain("event", "after_vm_pause", live, vm)
                elif event == libvirt.VIR_DOMAIN_EVENT_RESUMED and vm.status == "paused" and domain is not None:
                    if lv.status_of(domain) == "up":
                        self._update(vm, status="up")
        except Exception:  # an event must never kill the worker
            log.exception("handling a libvirt event for VM %s", vm_id)


# What a destination may ask our libvirtd to connect to: libvirt's network
# transports, without options that run programs or turn verification off.
_LIBVIRT_TRANSPORTS = frozenset({"", "tls", "tcp", "ssh", "libssh", "libssh2", "unix"})
_LIBVIRT_URI_OPTIONS = frozenset({"socket", "mode", "name"})


def _check_offer(offer: object, vm: VmRecord) -> None:
    """A destination's answer is input too: refuse what could turn our own
    libvirtd against us (an ext:// transport runs a program) or start
    another VM than the one we migrate."""
    if not isinstance(offer, dict) or not all(isinstance(offer.get(k), str) for k in ("xml", "libvirtUri", "migrationUri")):
        raise WrongStateError("the destination's migration offer is malformed")
    uri = urllib.parse.urlsplit(offer["libvirtUri"])
    driver, _, transport = uri.scheme.partition("+")
    options = {key for key, _ in urllib.parse.parse_qsl(uri.query, keep_blank_values=True)}
    if not driver or transport not in _LIBVIRT_TRANSPORTS or not options <= _LIBVIRT_URI_OPTIONS:
        raise WrongStateError(f"the destination offered a libvirt URI we refuse: {offer['libvirtUri']!r}")
    if not offer["migrationUri"].startswith("tcp://"):
        raise WrongStateError(f"the destination offered a migration URI we refuse: {offer['migrationUri']!r}")
    if offer.get("listenAddress") is not None and not isinstance(offer["listenAddress"], str):
        raise WrongStateError("the destination's migration offer is malformed")
    try:
        root = domxml.parse_domain(offer["xml"])
    except UsageError as exc:
        raise WrongStateError(f"the destination offered a domain XML we refuse: {exc}") from None
    if domxml.identity(root) != (vm.vm_id, vm.name):
        raise WrongStateError("the destination offered the XML of another domain (uuid or name differs)")


def _reachable_uri(uri: str, dst: str) -> str:
    """A destination that listens for migrations on every address (0.0.0.0,
    ::) gets the data where its agent was reached, not at 0.0.0.0 (which
    would be this host itself)."""
    scheme, _, address = uri.partition("://")
    host, port = split_address(address, "migration URI")
    if host not in ("0.0.0.0", "::"):
        return uri
    peer = split_address(dst, "dst")[0]
    return f"{scheme}://[{peer}]:{port}" if ":" in peer else f"{scheme}://{peer}:{port}"


def _check_released(what: str, domain: libvirt.virDomain, device: Any) -> None:
    """libvirt returns from an unplug the guest has not acknowledged (a PCI
    device with no guest OS to release it) with the device still attached:
    that is no unplug, whatever libvirt's return says."""
    live = domxml.parse_domain(lv.call(f"{what}: reading the live XML", domain.XMLDesc, 0))
    if domxml.find_same_device(live, device) is not None:
        name = ", ".join(sorted(domxml.device_keys(device)))
        raise LibvirtError(f"{what}: the guest has not released <{device.tag}> {name}; the unplug stays pending")


def _private_directory(directory: Path, mode: int) -> None:
    """Make `directory` (or accept it): ours, not a symlink, and writable by
    nobody else, since hooks' payloads and the state live there."""
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{directory} must be a directory, not a symlink")
    if st.st_uid != os.geteuid():
        raise UsageError(f"{directory} is owned by uid {st.st_uid}, not the agent's user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
    if mode == 0o711 and stat.S_IMODE(st.st_mode) & 0o011 != 0o011:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | 0o011)


def _empty_directory(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _version_string(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _host_uuid(conn: libvirt.virConnect) -> str | None:
    try:
        root = domxml.parse(conn.getCapabilities(), "capabilities")
    except (libvirt.libvirtError, UsageError):
        return None
    return root.findtext("host/uuid")

