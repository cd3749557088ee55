#!/usr/bin/python3
"""boot_hostdev: boot the VM from a passed-through host device.

boot_hostdev=pci_0000_00_1f_2    the PCI device 0000:00:1f.2
boot_hostdev=scsi_0_0_1_0        the SCSI device host0, bus 0, target 1, unit 0
boot_hostdev=usb_1_4             the USB device 4 on bus 1

(usb_usbN: the root hub of bus N, device 1). The <hostdev> with that source
gets <boot order='1'/>; every other device boot order goes up by one. A legacy <os><boot dev=...>
list (libvirt refuses it beside per-device orders) is turned into device
boot orders first. No such <hostdev> in the domain: exit 1, XML untouched.
"""
import os
import re

import hooking

PATTERNS = (
    ("pci", re.compile(r"pci_([0-9a-fA-F]{4})_([0-9a-fA-F]{2})_([0-9a-fA-F]{2})_([0-7])\Z")),
    ("scsi", re.compile(r"scsi_([0-9]+)_([0-9]+)_([0-9]+)_([0-9]+)\Z")),
    ("usb", re.compile(r"usb_([0-9]+)_([0-9]+)\Z")),
    ("usb", re.compile(r"usb_usb([0-9]+)()\Z")),  # a root hub: device 1
)
OS_BOOT_DEVICES = {"hd": ("disk", ("disk", "lun")), "cdrom": ("disk", ("cdrom",)),
                   "fd": ("disk", ("floppy",)), "network": ("interface", None)}


def elements(parent, tag=None):
    return [node for node in parent.childNodes
            if node.nodeType == node.ELEMENT_NODE and (tag is None or node.tagName == tag)]


def child(parent, tag):
    found = elements(parent, tag)
    return found[0] if found else None


def number(text, base):
    text = (text or "").strip()
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        return int(text, base)
    except ValueError:
        return None


def parse(name):
    for kind, pattern in PATTERNS:
        match = pattern.match(name)
        if match:
            return kind, [int(part or "1", 16 if kind == "pci" else 10) for part in match.groups()]
    return None, None


def matches(hostdev, kind, parts):
    if hostdev.getAttribute("type") != kind:
        return False
    source = child(hostdev, "source")
    if source is None:
        return False
    address = child(source, "address")
    if address is None:
        return False
    if kind == "pci":
        keys, base = ("domain", "bus", "slot", "function"), 16
        return [number(address.getAttribute(key), base) for key in keys] == parts
    if kind == "usb":
        return [number(address.getAttribute(key), 10) for key in ("bus", "device")] == parts
    adapter = child(source, "adapter")
    if adapter is None or adapter.getAttribute("name") != "scsi_host%d" % parts[0]:
        return False
    return [number(address.getAttribute(key), 10) for key in ("bus", "target", "unit")] == parts[1:]


def boot_order(device):
    boot = child(device, "boot")
    if boot is None or not boot.hasAttribute("order"):
        return None
    order = number(boot.getAttribute("order"), 10)
    return order if order is not None else 1 << 30


def set_boot_order(doc, device, order):
    boot = child(device, "boot")
    if boot is None:
        boot = doc.createElement("boot")
        device.appendChild(boot)
    boot.setAttribute("order", str(order))


def convert_os_boot(doc, domain, devices):
    """Replace <os><boot dev=...> by device boot orders (libvirt takes one or
    the other, never both)."""
    os_element = child(domain, "os")
    boots = elements(os_element, "boot") if os_element is not None else []
    if not boots:
        return
    wanted = [boot.getAttribute("dev") for boot in boots]
    for boot in boots:
        os_element.removeChild(boot)
    if any(boot_order(device) is not None for device in elements(devices)):
        return
    order = 1
    for dev in wanted:
        tag, kinds = OS_BOOT_DEVICES.get(dev, (None, None))
        for device in elements(devices, tag) if tag else ():
            if kinds is None or (device.getAttribute("device") or "disk") in kinds:
                set_boot_order(doc, device, order)
                order += 1
                break


def boot_first(doc, domain, devices, first):
    """`first` gets boot order 1; every other device boot order goes up by one."""
    convert_os_boot(doc, domain, devices)
    for device in elements(devices):
        order = boot_order(device)
        if device is not first and order is not None:
            set_boot_order(doc, device, order + 1)
    set_boot_order(doc, first, 1)


def main():
    name = os.environ.get("boot_hostdev")
    if name is None:
        return
    kind, parts = parse(name)
    if kind is None:
        hooking.exit_hook("boot_hostdev: invalid device name %r: expected pci_DDDD_BB_SS_F, "
                          "scsi_H_B_T_U or usb_BUS_DEVICE" % name, 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    devices = child(domain, "devices")
    hostdevs = [dev for dev in elements(devices, "hostdev")] if devices is not None else []
    found = [dev for dev in hostdevs if matches(dev, kind, parts)]
    if not found:
        hooking.exit_hook("boot_hostdev: the VM has no %s host device %s: nothing to boot from"
                          % (kind.upper(), name), 1)
    boot_first(domxml, domain, devices, found[0])
    hooking.log("boot_hostdev: %s boots first" % name)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
