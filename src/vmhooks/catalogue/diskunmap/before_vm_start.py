#!/usr/bin/python3
"""diskunmap: let the guest's discards (TRIM/UNMAP) reach the storage.

diskunmap=on    sets discard='unmap' on the <driver> of every disk
                (device='disk') on a SCSI or IDE bus, and of every LUN
                (device='lun'), adding <driver name='qemu'> when missing
diskunmap=off   does nothing

Other values: exit 1.
"""
import os

import hooking
import vmhooks_catalogue

BUSES = ("scsi", "ide")


child = vmhooks_catalogue.child


def wants_unmap(disk):
    device = disk.getAttribute("device") or "disk"
    if device == "lun":
        return True
    target = child(disk, "target")
    return device == "disk" and target is not None and target.getAttribute("bus") in BUSES


def main():
    value = os.environ.get("diskunmap")
    if value is None:
        return
    if value not in ("on", "off"):
        hooking.exit_hook("diskunmap: invalid value %r: expected on or off" % value, 1)
    if value == "off":
        return
    domxml = hooking.read_domxml()
    devices = child(domxml.documentElement, "devices")
    changed = []
    for disk in devices.getElementsByTagName("disk") if devices is not None else ():
        if disk.parentNode is not devices or not wants_unmap(disk):
            continue
        driver = child(disk, "driver")
        if driver is None:
            driver = domxml.createElement("driver")
            driver.setAttribute("name", "qemu")
            disk.insertBefore(driver, disk.firstChild)
        if driver.getAttribute("discard") != "unmap":
            driver.setAttribute("discard", "unmap")
            target = child(disk, "target")
            changed.append(target.getAttribute("dev") if target is not None else "?")
    if not changed:
        hooking.log("diskunmap: no SCSI or IDE disk or LUN to change")
        return
    hooking.log("diskunmap: discard='unmap' on %s" % ", ".join(changed))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
