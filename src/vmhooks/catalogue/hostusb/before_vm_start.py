#!/usr/bin/python3
"""hostusb: pass host USB devices through to the VM.

hostusb=0x1234:0xbeef&0x2222:0xabaa adds, per device,

  <hostdev mode='subsystem' type='usb'>
    <source>
      <vendor id='0x1234'/>
      <product id='0xbeef'/>
    </source>
  </hostdev>

A device already passed through is skipped. A malformed id: exit 1, nothing
changed. The device must be plugged in when the VM starts (libvirt refuses
to start it otherwise); a device local to the host blocks migration.
"""
import re

import hooking
import vmhooks_catalogue

DEVICE = re.compile(r"0x([0-9a-fA-F]{4}):0x([0-9a-fA-F]{4})\Z")


elements = vmhooks_catalogue.elements


def parse(value):
    ids = []
    for item in value.split("&"):
        match = DEVICE.match(item.strip())
        if not match:
            raise ValueError("%r: expected 0xVVVV:0xPPPP" % item)
        ids.append(tuple(item.strip().split(":")))
    return ids


def present(devices):
    found = set()
    for hostdev in elements(devices, "hostdev"):
        if hostdev.getAttribute("type") != "usb":
            continue
        for source in elements(hostdev, "source"):
            vendor, product = elements(source, "vendor"), elements(source, "product")
            if vendor and product:
                found.add((vendor[0].getAttribute("id").lower(), product[0].getAttribute("id").lower()))
    return found


def main():
    ids = vmhooks_catalogue.property_or_exit("hostusb", parse)
    if ids is None:
        return
    domxml = hooking.read_domxml()
    devices = vmhooks_catalogue.devices_or_exit("hostusb", domxml)
    already = present(devices)
    added = []
    for vendor, product in ids:
        key = (vendor.lower(), product.lower())
        if key in already:
            hooking.log("hostusb: %s:%s is already passed through, skipped" % (vendor, product))
            continue
        already.add(key)
        element = vmhooks_catalogue.element
        devices.appendChild(element(domxml, "hostdev", {"mode": "subsystem", "type": "usb"}, [
            element(domxml, "source", None, [
                element(domxml, "vendor", {"id": vendor}),
                element(domxml, "product", {"id": product}),
            ]),
        ]))
        added.append("%s:%s" % (vendor, product))
    if added:
        hooking.log("hostusb: passing through %s" % ", ".join(added))
        hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
