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
import vmhooks_catalogue

PATTERNS = (
    ("pci", re.compile(r"pci_([0-9a-fA-F]{4})_([0-9a-fA-F]{2})_([0-9a-fA-F]{2})_([0-7])\Z")),
    ("scsi", re.compile(r"scsi_([0-9]+)_([0-9]+)_([0-9]+)_([0-9]+)\Z")),
    ("usb", re.compile(r"usb_([0-9]+)_([0-9]+)\Z")),
    ("usb", re.compile(r"usb_usb([0-9]+)()\Z")),  # a root hub: device 1
)
child = vmhooks_catalogue.child


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


def boot_order_number(text):
    """A boot order as this hook has always read it: decimal, or hex with 0x."""
    return number(text, 10)


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
    hostdevs = vmhooks_catalogue.elements(devices, "hostdev") if devices is not None else []
    found = [dev for dev in hostdevs if matches(dev, kind, parts)]
    if not found:
        hooking.exit_hook("boot_hostdev: the VM has no %s host device %s: nothing to boot from"
                          % (kind.upper(), name), 1)
    vmhooks_catalogue.boot_first(domxml, domain, devices, found[0], parse=boot_order_number)
    hooking.log("boot_hostdev: %s boots first" % name)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
