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


def elements(parent, tag):
    return [node for node in parent.childNodes
            if node.nodeType == node.ELEMENT_NODE and node.tagName == tag]


def main():
    path = os.environ.get("floppy")
    if path is None:
        return
    if not path.startswith("/"):
        hooking.exit_hook("floppy: invalid value %r: expected the absolute path of an image" % path, 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    devices = elements(domain, "devices")
    if not devices:
        hooking.exit_hook("floppy: the domain has no <devices>", 1)
    devices = devices[0]
    disks = elements(devices, "disk")
    used = set()
    for disk in disks:
        for target in elements(disk, "target"):
            used.add(target.getAttribute("dev"))
        for source in elements(disk, "source"):
            if disk.getAttribute("device") == "floppy" and source.getAttribute("file") == path:
                hooking.log("floppy: %s is already attached, doing nothing" % path)
                return
    free = [name for name in ("fda", "fdb") if name not in used]
    if not free:
        hooking.exit_hook("floppy: both floppy drives (fda, fdb) are taken", 1)
    disk = domxml.createElement("disk")
    disk.setAttribute("type", "file")
    disk.setAttribute("device", "floppy")
    source = domxml.createElement("source")
    source.setAttribute("file", path)
    target = domxml.createElement("target")
    target.setAttribute("dev", free[0])
    target.setAttribute("bus", "fdc")
    disk.appendChild(source)
    disk.appendChild(target)
    devices.insertBefore(disk, disks[-1].nextSibling if disks else None)
    if not os.path.exists(path):
        hooking.log("floppy: warning: %s does not exist on this host" % path)
    hooking.log("floppy: %s attached as %s" % (path, free[0]))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
