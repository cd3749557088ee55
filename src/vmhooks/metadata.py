"""Custom properties in a domain's `<metadata>`, where oVirt Engine puts them.

Engine sends a VM's custom properties as

    <metadata><ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
      <ovirt-vm:custom><ovirt-vm:NAME>VALUE</ovirt-vm:NAME>...</ovirt-vm:custom>
      <ovirt-vm:device mac_address="00:1a:4a:..."><ovirt-vm:custom>...</ovirt-vm:custom></ovirt-vm:device>
      <ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:custom>...</ovirt-vm:custom></ovirt-vm:device>
    </ovirt-vm:vm></metadata>

`read` takes them out (devices keyed as requests name them: MAC or target
dev, lower-cased, or an `alias` attribute), `write` puts the properties a
VM runs with back in the same shape, touching nothing else of the metadata,
so `virsh dumpxml` shows them and a restarted agent finds them again.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import NamedTuple

NS = "http://ovirt.org/vm/1.0"
ET.register_namespace("ovirt-vm", NS)  # Engine's prefix on output
VM, CUSTOM, DEVICE = f"{{{NS}}}vm", f"{{{NS}}}custom", f"{{{NS}}}device"


class EngineProperties(NamedTuple):
    custom: dict[str, str]
    devices: dict[str, dict[str, str]]  # device key (MAC, target dev or alias) -> properties

    @property
    def empty(self) -> bool:
        return not self.custom and not self.devices


def _properties(parent: ET.Element) -> dict[str, str]:
    custom = parent.find(CUSTOM)
    if custom is None:
        return {}
    return {child.tag.rpartition("}")[2]: (child.text or "").strip() for child in custom}


def _device_key(device: ET.Element) -> str | None:
    if device.get("mac_address"):
        return device.get("mac_address", "").lower()
    if device.get("devtype") == "disk" and device.get("name"):
        return device.get("name", "").lower()
    if device.get("alias"):
        return device.get("alias", "").lower()
    return None


def read(root: ET.Element) -> EngineProperties:
    """The custom properties in a domain element's Engine metadata."""
    vm = root.find(f"metadata/{VM}")
    if vm is None:
        return EngineProperties({}, {})
    devices = {}
    for device in vm.findall(DEVICE):
        key, props = _device_key(device), _properties(device)
        if key and props:
            devices.setdefault(key, {}).update(props)
    return EngineProperties(_properties(vm), devices)


def merged(
    engine: EngineProperties, custom: Mapping[str, object] | None, devices: Mapping[str, Mapping[str, object]] | None
) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """The metadata's properties with the call's own on top (the call's win)."""
    vm_custom: dict[str, object] = {**engine.custom, **(custom or {})}
    device_custom: dict[str, dict[str, object]] = {key: dict(props) for key, props in engine.devices.items()}
    for key, props in (devices or {}).items():
        device_custom.setdefault(str(key).lower(), {}).update(props)
    return vm_custom, device_custom


def _device_attributes(device: ET.Element, key: str) -> dict[str, str]:
    """How Engine names `device` in its metadata."""
    mac = device.find("mac")
    if device.tag == "interface" and mac is not None and mac.get("address"):
        return {"mac_address": mac.get("address", "").lower()}
    target = device.find("target")
    if device.tag == "disk" and target is not None and target.get("dev"):
        return {"devtype": "disk", "name": target.get("dev", "")}
    return {"alias": key}


def _set_properties(parent: ET.Element, props: Mapping[str, str]) -> None:
    old = parent.find(CUSTOM)
    if old is not None:
        parent.remove(old)
    if props:
        custom = ET.SubElement(parent, CUSTOM)
        for name, value in props.items():
            ET.SubElement(custom, f"{{{NS}}}{name}").text = value


def write(
    root: ET.Element, custom: Mapping[str, str], devices: Mapping[str, Mapping[str, str]],
    index: Mapping[str, ET.Element],
) -> None:  # fmt: skip
    """Put `custom` and each device's properties into the domain element's
    Engine metadata (`index`: device key -> its element in `root`). Device
    keys that name no device of `root` are left out."""
    if not custom and not devices and root.find(f"metadata/{VM}") is None:
        return
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    vm = metadata.find(VM)
    if vm is None:
        vm = ET.SubElement(metadata, VM)
    _set_properties(vm, custom)
    for key, props in devices.items():
        element = index.get(key)
        if element is None:
            continue
        attributes = _device_attributes(element, key)
        entry = next(
            (d for d in vm.findall(DEVICE) if all((d.get(k) or "").lower() == v.lower() for k, v in attributes.items())),
            None,
        )
        if entry is None:
            entry = ET.SubElement(vm, DEVICE, attributes)
        _set_properties(entry, props)
