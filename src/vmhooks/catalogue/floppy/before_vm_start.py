#!/usr/bin/python3
"""floppy: attach a floppy image to the VM.

floppy=/images/drivers.vfd adds

  <disk type='file' device='floppy'>
    <source file='/images/drivers.vfd'/>
    <target dev='fda' bus='fdc'/>
  </disk>

(fdb when fda is taken). The image is local to the host, so the VM cannot
migrate (see before_vm_migrate_source). A relative path: exit 1. Both floppy
drives taken: exit 1.
"""
import os

import hooking
import vmhooks_catalogue


def main():
    path = os.environ.get("floppy")
    if path is None:
        return
    if not path.startswith("/"):
        hooking.exit_hook("floppy: invalid value %r: expected the absolute path of an image" % path, 1)
    domxml = hooking.read_domxml()
    devices = vmhooks_catalogue.devices_or_exit("floppy", domxml)
    disks = vmhooks_catalogue.elements(devices, "disk")
    floppies = [disk for disk in disks if disk.getAttribute("device") == "floppy"]
    if path in vmhooks_catalogue.source_values(floppies, "file"):
        hooking.log("floppy: %s is already attached, doing nothing" % path)
        return
    used = vmhooks_catalogue.target_devs(disks)
    free = [name for name in ("fda", "fdb") if name not in used]
    if not free:
        hooking.exit_hook("floppy: both floppy drives (fda, fdb) are taken", 1)
    element = vmhooks_catalogue.element
    disk = element(domxml, "disk", {"type": "file", "device": "floppy"}, [
        element(domxml, "source", {"file": path}),
        element(domxml, "target", {"dev": free[0], "bus": "fdc"}),
    ])
    vmhooks_catalogue.insert_disk(devices, disk)
    if not os.path.exists(path):
        hooking.log("floppy: warning: %s does not exist on this host" % path)
    hooking.log("floppy: %s attached as %s" % (path, free[0]))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
