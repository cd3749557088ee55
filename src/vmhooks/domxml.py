"""Domain and device XML: parsing requests, identity, and finding and
replacing the devices that carry custom properties."""
from __future__ import annotations

import secrets
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from vmhooks.errors import UsageError

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
KUBEVIRT_NS = "http://kubevirt.io"  # KubeVirt's <metadata><kubevirt xmlns=...>
# Readable prefixes on output rather than ns0, ns1 (ElementTree cannot keep
# a default namespace on one element; a prefix means the same).
ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("kubevirt", KUBEVIRT_NS)


def parse(text: object, what: str) -> ET.Element:
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{what} must be a non-empty XML string")
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise UsageError(f"{what} is malformed XML: {exc}") from None


def parse_domain(text: object) -> ET.Element:
    root = parse(text, "domain XML")
    if root.tag != "domain":
        raise UsageError(f"domain XML has root <{root.tag}>, expected <domain>")
    return root


def to_string(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")


def identity(root: ET.Element) -> tuple[str | None, str | None]:
    """(uuid, name) of a domain element; None where absent."""
    uuid, name = root.findtext("uuid"), root.findtext("name")
    return (uuid.strip().lower() if uuid else None, name.strip() if name else None)


def normalise_uuid(value: object, what: str = "vmId") -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError:
        raise UsageError(f"{what} {value!r} is not a UUID") from None


def ensure_uuid(root: ET.Element, vm_id: str | None) -> tuple[str, bool]:
    """The domain's UUID reconciled with a requested vmId, and whether the
    XML was rewritten for it.

    Afterwards the XML carries exactly one <uuid>, in canonical form, so the
    agent, the hooks and libvirt all see the same one: a missing or blank
    <uuid> is filled in (libvirt would otherwise pick a random one of its
    own), a non-canonical one is rewritten."""
    elements = root.findall("uuid")
    if len(elements) > 1 or len(root.findall("name")) > 1:
        raise UsageError("domain XML has more than one <uuid> or <name>")
    text = (elements[0].text or "").strip() if elements else ""
    existing = normalise_uuid(text, "the domain's <uuid>") if text else None
    if vm_id is not None:
        vm_id = normalise_uuid(vm_id)
        if existing is not None and existing != vm_id:
            raise UsageError(f"vmId {vm_id} differs from the domain's <uuid> {existing}")
    chosen = vm_id or existing or str(uuidlib.uuid4())
    if elements and elements[0].text == chosen:
        return chosen, False
    if elements:
        element = elements[0]
    else:
        element = ET.Element("uuid")
        name = root.find("name")
        element.tail = name.tail if name is not None else None  # the same indentation
        root.insert(1, element)
    element.text = chosen
    return chosen, True


def device_keys(device: ET.Element) -> set[str]:
    """The names a request may use for a device: alias, MAC, target dev."""
    keys = set()
    for path, attribute in (("alias", "name"), ("mac", "address"), ("target", "dev")):
        child = device.find(path)
        if child is not None and child.get(attribute):
            keys.add(child.get(attribute, "").lower())
    return keys


def find_device(root: ET.Element, key: str) -> ET.Element | None:
    devices = root.find("devices")
    if devices is None:
        return None
    for device in devices:
        if key.lower() in device_keys(device):
            return device
    return None


def device_index(root: ET.Element) -> dict[str, ET.Element]:
    """Every name (alias, MAC, target dev) of every device, to its element:
    built once per request, so looking up many devices stays linear."""
    index: dict[str, ET.Element] = {}
    devices = root.find("devices")
    for device in devices if devices is not None else ():
        for key in device_keys(device):
            index.setdefault(key, device)  # the first device of that name, as find_device
    return index


def custom_devices(xml: str, device_custom: Mapping[str, Mapping[str, str]]) -> list[tuple[dict[str, str], str]]:
    """(properties, device XML) of each device of `xml` that has custom properties."""
    if not device_custom:
        return []
    index = device_index(parse_domain(xml))
    found = []
    for key, props in device_custom.items():
        device = index.get(key)
        if device is not None:
            found.append((dict(props), to_string(device)))
    return found


def find_same_device(root: ET.Element, device: ET.Element) -> ET.Element | None:
    """The device of `root` that `device` names: same element, a shared alias, MAC or target dev."""
    devices = root.find("devices")
    keys = device_keys(device)
    if devices is None or not keys:
        return None
    return next((found for found in devices if found.tag == device.tag and device_keys(found) & keys), None)


def replace_device(root: ET.Element, old: ET.Element, new: ET.Element) -> None:
    devices = root.find("devices")
    assert devices is not None
    index = list(devices).index(old)
    new.tail = old.tail
    devices[index] = new


EXPIRED = "1970-01-01T00:00:01"


def lock_graphics(root: ET.Element) -> bool:
    """Give every VNC/SPICE display without a password a random, already
    expired one (as VDSM does): nobody can connect until VM.setTicket, and
    QEMU only accepts a ticket for a display that started with a password.
    True when the XML changed."""
    changed = False
    for graphics in root.findall("devices/graphics"):
        if graphics.get("type") in ("vnc", "spice") and graphics.get("passwd") is None:
            graphics.set("passwd", secrets.token_urlsafe(6)[:8])  # VNC uses 8 characters at most
            graphics.set("passwdValidTo", EXPIRED)
            changed = True
    return changed
