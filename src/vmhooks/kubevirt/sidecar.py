"""The KubeVirt calls as VDSM hook points, with no gRPC in sight:
OnDefineDomain -> before_device_create (each device with properties) ->
before_vm_start; PreCloudInitIso -> before_cloudinit_iso; Shutdown ->
after_vm_destroy. Nothing else ever runs here, and libvirt is never
touched: virt-launcher defines the domain with the XML we answer.

Each chain is recorded in the store and logged as one JSON line on stdout
(what `kubectl logs` shows); a chain that aborts raises HookError, bad input
raises UsageError before any hook runs."""
from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from vmhooks import domxml, properties
from vmhooks.catalogue import installed_property_rules
from vmhooks.errors import HookError, InvalidEnvironmentError, StateError, UsageError, VmhooksError
from vmhooks.kubevirt.vmi import CUSTOM_ANNOTATION, DEVICE_ANNOTATION, Vmi, json_object, parse_vmi
from vmhooks.runner import ChainResult, RunnerConfig, run_chain, stderr_summary
from vmhooks.store import Store, VmRecord

COMPONENT = "vmhooks-kubevirt-sidecar"
SOCKET_DIR = Path("/var/run/kubevirt-hooks")  # KubeVirt's shared directory
DEFAULT_NAME = "vmhooks"
DEFAULT_HOOK_TIMEOUT = 30.0  # seconds per script: well inside virt-launcher's minute per call
CALLER = "kubevirt virt-launcher"  # who asks, in the history

Emit = Callable[[dict[str, Any]], None]


class SidecarSettings(NamedTuple):
    hooks_dir: Path
    socket_dir: Path = SOCKET_DIR
    name: str = DEFAULT_NAME
    state_dir: Path | None = None  # default: <socket_dir>/<name>-state, in the pod's emptyDir
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    properties: str | None = None  # admin rules, name=regex;...
    socket_mode: int = 0o600

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f"{self.name}.sock"

    @property
    def state_path(self) -> Path:
        # A directory: the newest virt-launcher skips those when it looks for
        # sockets, older ones fail to dial it and go on.
        return self.state_dir if self.state_dir is not None else self.socket_dir / f"{self.name}-state"


class JsonLines:
    """One JSON object a line, in KubeVirt's own log shape (timestamp,
    level, component, msg) plus the facts of the event."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": event.pop("level", "info"),
            "component": COMPONENT,
            **event,
        }
        text = json.dumps(line, default=str)
        with self._lock:
            stream = self.stream or sys.stdout
            stream.write(text + "\n")
            stream.flush()


class Sidecar:
    def __init__(self, settings: SidecarSettings, emit: Emit) -> None:
        self.settings = settings
        self.emit = emit
        # Read once (the hooks tree of a sidecar image does not change under
        # it), and first: bad rules fail the start before anything is made.
        self.rules = properties.combine(
            installed_property_rules(settings.hooks_dir), properties.parse_user_defined(settings.properties)
        )
        try:
            settings.state_path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.store = Store(settings.state_path / "vmhooks.db")
        except (OSError, sqlite3.Error, StateError) as exc:
            raise VmhooksError(f"cannot keep the hook history in {settings.state_path}: {exc}") from None
        self.config = RunnerConfig(
            hooks_dir=settings.hooks_dir,
            timeout=settings.hook_timeout,
            run_dir=settings.state_path,  # launch flags land here; virt-launcher starts the VM, not us
            property_rules=self.rules,
        )
        self._lock = threading.Lock()
        # The VM this pod runs, for Shutdown (which carries no VMI): the last
        # one defined, kept in the store across a restart of this container.
        self._vm: VmRecord | None = next((vm for vm in self.store.vms() if vm.status == "up"), None)

    def close(self) -> None:
        self.store.close()

    # -- the three calls ------------------------------------------------------

    def define_domain(self, domain_xml: bytes, vmi_json: bytes, deadline: float) -> bytes:
        """The domain XML virt-launcher should define instead of `domain_xml`.

        The same input gives the same output: nothing is carried over from
        earlier calls (virt-launcher may call more than once for one VMI)."""
        vmi = parse_vmi(vmi_json)
        text = _utf8(domain_xml, "the domain XML")
        root = domxml.parse_domain(text)
        custom = self._checked(vmi.custom, CUSTOM_ANNOTATION, "custom property")
        devices = self._custom_devices(root, vmi)
        edited = False
        for device, props in devices:
            device_xml = domxml.to_string(device)
            result = self._chain("OnDefineDomain", "before_device_create", device_xml, vmi, props, deadline)
            if result.changed:
                domxml.replace_device(root, device, domxml.parse(result.payload, "device XML"))
                edited = True
        result = self._chain(
            "OnDefineDomain", "before_vm_start", domxml.to_string(root) if edited else text, vmi, custom, deadline
        )
        final: str = result.payload
        with self._lock:
            self._vm = VmRecord(vmi.uid, vmi.label, "up", final, custom, vmi.device_custom)
            self.store.put_vm(self._vm)
        return final.encode("utf-8")

    def pre_cloud_init_iso(
        self, cloud_init_data: bytes, no_cloud_source: bytes, vmi_json: bytes, deadline: float
    ) -> tuple[bytes, bytes]:
        """(cloudInitData, cloudInitNoCloudSource) to answer; the input
        untouched, byte for byte, unless a hook changed the data."""
        vmi = parse_vmi(vmi_json)
        custom = self._checked(vmi.custom, CUSTOM_ANNOTATION, "custom property")
        # KubeVirt sends CloudInitData; a virt-launcher older than it only the
        # NoCloud source. Hooks get whichever is the data.
        legacy = not cloud_init_data.strip()
        data = json_object(no_cloud_source if legacy else cloud_init_data, "the cloud-init data")
        result = self._chain("PreCloudInitIso", "before_cloudinit_iso", data, vmi, custom, deadline)
        if not result.changed:
            return cloud_init_data, no_cloud_source
        edited = result.payload
        if not isinstance(edited, dict):
            kind = type(edited).__name__
            raise HookError(f"before_cloudinit_iso: the hooks left a JSON {kind}, not an object", result)
        if legacy:
            return cloud_init_data, _dump(edited)
        # virt-launcher falls back to the NoCloud source when the data lacks
        # user data: keep the two saying the same thing.
        source = json_object(no_cloud_source, "the NoCloud source") if no_cloud_source.strip() else {}
        for field, key in (("UserData", "userData"), ("NetworkData", "networkData")):
            if field in edited:
                source[key] = edited[field]
        return _dump(edited), _dump(source)

    def shutdown(self, deadline: float) -> None:
        """after_vm_destroy on the last domain this sidecar defined."""
        with self._lock:
            vm = self._vm
            self._vm = None
        if vm is None:
            self.emit({"msg": "Shutdown: no domain was defined through this sidecar, after_vm_destroy not run"})
            return
        vmi = Vmi(vm.vm_id, vm.name, vm.custom, vm.device_custom)
        try:
            self._chain("Shutdown", "after_vm_destroy", vm.xml, vmi, vm.custom, deadline)
        finally:
            self.store.put_vm(vm._replace(status="down"))

    # -- helpers ----------------------------------------------------------------

    def _checked(self, values: Mapping[str, str], where: str, origin: str) -> dict[str, str]:
        """Values against the installed hooks' and the admin's regexes."""
        if self.rules is not None:
            try:
                properties.check(values, self.rules, origin)
            except InvalidEnvironmentError as exc:
                raise UsageError(f"{where}: {exc}") from None
        return dict(values)

    def _custom_devices(self, root: Any, vmi: Vmi) -> list[tuple[Any, dict[str, str]]]:
        """(device element, checked properties) for each device the annotation names."""
        index = domxml.device_index(root)
        found: list[tuple[Any, dict[str, str]]] = []
        named: dict[int, str] = {}
        for key, props in vmi.device_custom.items():
            where = f"{DEVICE_ANNOTATION} {key!r}"
            device = index.get(key.lower())
            if device is None:
                hint = _alias_hint(index, key)
                raise UsageError(f"{where}: no device with that alias, MAC or target dev in the domain XML{hint}")
            if id(device) in named:
                raise UsageError(f"{where}: names the same device as {named[id(device)]!r}")
            named[id(device)] = key
            found.append((device, self._checked(props, where, "device custom property")))
        return found

    def _chain(
        self, call: str, point: str, payload: Any, vmi: Vmi, custom: Mapping[str, str], deadline: float
    ) -> ChainResult:
        result = run_chain(point, payload, self.config, custom=custom, vm_id=vmi.uid, deadline=deadline)
        self.store.record_chain(call, vmi.uid, result, vm_name=vmi.label, caller=CALLER)
        if result.scripts or result.warnings:
            self.emit(chain_event(call, vmi, result))
        result.raise_if_aborting()
        return result


def chain_event(call: str, vmi: Vmi, result: ChainResult) -> dict[str, Any]:
    if result.failed:
        msg = result.error_message()
    else:
        msg = f"{result.point.name}: {len(result.scripts)} script(s) ok"
        msg += ", payload changed" if result.changed else ""
    return {
        "level": "error" if result.aborts_operation else "warning" if result.failed else "info",
        "msg": msg,
        "call": call,
        "point": result.point.name,
        "vmId": vmi.uid,
        "vmi": vmi.label,
        "aborted": result.aborts_operation,
        "changed": result.changed,
        "rejected": result.rejected,
        "warnings": list(result.warnings),
        "scripts": [
            {
                "name": run.name,
                "status": str(run.status),
                "rc": run.rc,
                "ms": round(run.duration_s * 1000, 1),
                "changed": run.changed,
                "note": run.note,
                "stderr": stderr_summary(run.stderr),
            }
            for run in result.scripts
        ],
    }


def _alias_hint(index: Mapping[str, Any], key: str) -> str:
    """KubeVirt names devices `ua-<name in the VMI spec>`: say so when the
    user wrote the spec's name."""
    if not key.lower().startswith("ua-") and f"ua-{key.lower()}" in index:
        return f" (KubeVirt's alias for it is 'ua-{key}')"
    return ""


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not UTF-8 (byte {exc.start})") from None


def _dump(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")
