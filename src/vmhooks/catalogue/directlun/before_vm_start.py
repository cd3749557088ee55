#!/usr/bin/python3
"""directlun: attach multipath LUNs to the VM as block disks.

directlun=LUNID[:readonly][,LUNID...] adds, per LUN,

  <disk type='block' device='disk'>
    <driver name='qemu' type='raw' cache='none' io='native'/>
    <source dev='/dev/mapper/LUNID'/>
    <target dev='vdb' bus='virtio'/>
    <readonly/>                       (with :readonly)
  </disk>

on the first free vdX names. A LUN already attached is skipped. A LUN id
with '/' or other characters outside [A-Za-z0-9_.-], or an option other
than readonly: exit 1, nothing changed. The device node must be readable by
QEMU's user (libvirt's DAC driver relabels it when dynamic_ownership is on).
"""
import os
import re

import hooking
import vmhooks_catalogue

LUN = re.compile(r"[A-Za-z0-9_.-]+\Z")
MAPPER = "/dev/mapper/"


def parse(value):
    luns = []
    for item in value.split(","):
        lun, sep, option = item.strip().partition(":")
        if not LUN.match(lun) or lun in (".", ".."):
            raise ValueError("LUN id %r: expected letters, digits, '_', '.', '-'" % lun)
        if sep and option != "readonly":
            raise ValueError("LUN %s: unknown option %r (only readonly)" % (lun, option))
        luns.append((lun, bool(sep)))
    return luns


def make_disk(doc, path, name, readonly):
    element = vmhooks_catalogue.element
    disk = element(doc, "disk", {"type": "block", "device": "disk"}, [
        element(doc, "driver", {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}),
        element(doc, "source", {"dev": path}),
        element(doc, "target", {"dev": name, "bus": "virtio"}),
    ])
    if readonly:
        disk.appendChild(doc.createElement("readonly"))
    return disk


def main():
    luns = vmhooks_catalogue.property_or_exit("directlun", parse)
    if luns is None:
        return
    domxml = hooking.read_domxml()
    devices = vmhooks_catalogue.devices_or_exit("directlun", domxml)
    disks = vmhooks_catalogue.elements(devices, "disk")
    names = vmhooks_catalogue.free_disk_names("vd", vmhooks_catalogue.target_devs(disks))
    attached = vmhooks_catalogue.source_values(disks, "dev")
    added = []
    for lun, readonly in luns:
        path = MAPPER + lun
        if path in attached:
            hooking.log("directlun: %s is already attached, skipped" % path)
            continue
        name = next(names)
        attached.add(path)
        vmhooks_catalogue.insert_disk(devices, make_disk(domxml, path, name, readonly))
        if not os.path.exists(path):
            hooking.log("directlun: warning: %s does not exist on this host" % path)
        added.append("%s as %s%s" % (path, name, " (read-only)" if readonly else ""))
    if added:
        hooking.log("directlun: attached %s" % ", ".join(added))
        hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
