#!/usr/bin/python3
"""scratchpad: give the VM temporary scratch disks.

scratchpad=20G,/scratch/a.img[:1T,/scratch/b.img...]

creates each image with `qemu-img create -f qcow2 PATH SIZE` (SIZE: bytes,
or with a b/k/K/M/G/T suffix) and attaches it:

  <disk type='file' device='disk' snapshot='no'>
    <driver name='qemu' type='qcow2' cache='writeback' error_policy='stop'/>
    <source file='/scratch/a.img'/>
    <target dev='vdb' bus='virtio'/>
  </disk>

Beside each image, PATH.vmhooks-scratchpad records the VM it was made for:
after_vm_destroy removes only images so marked for that VM, and an existing
file without that mark is never overwritten (exit 1). An image left over by
the same VM is made anew. A malformed value, qemu-img missing or failing:
exit 1, nothing left behind. The VM cannot migrate (before_vm_migrate_source).
"""
import os
import re
import shutil

import hooking
import vmhooks_catalogue

ITEM = re.compile(r"([0-9]+[bkKMGT]?),(/[^,:]+)\Z")
MARK = ".vmhooks-scratchpad"


def parse(value):
    disks = []
    for item in value.split(":"):
        match = ITEM.match(item.strip())
        if not match:
            raise ValueError("%r: expected SIZE,/absolute/path (e.g. 20G,/scratch/a.img)" % item)
        size, path = match.groups()
        if int(re.match(r"[0-9]+", size).group()) == 0:
            raise ValueError("%r: the size is 0" % item)
        if os.path.normpath(path) != path or path.endswith(MARK):
            raise ValueError("%r: the path must be a plain normalised file path" % item)
        disks.append((size, path))
    if len(set(path for _, path in disks)) != len(disks):
        raise ValueError("the same path is given twice")
    return disks


def marked_for(path, vm_id):
    try:
        with open(path + MARK) as handle:
            return handle.read().strip() == vm_id
    except OSError:
        return False


def remove(path):
    for name in (path, path + MARK):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def create(qemu_img, size, path, vm_id):
    with open(path + MARK, "w") as handle:
        handle.write(vm_id + "\n")
    rc, _, err = hooking.execCmd([qemu_img, "create", "-q", "-f", "qcow2", path, size])
    if rc != 0:
        message = b" ".join(err).decode("utf-8", "replace").strip()
        remove(path)
        raise OSError("qemu-img create %s %s failed (exit %d): %s" % (path, size, rc, message))


def make_disk(doc, path, name):
    element = vmhooks_catalogue.element
    return element(doc, "disk", {"type": "file", "device": "disk", "snapshot": "no"}, [
        element(doc, "driver", {"name": "qemu", "type": "qcow2", "cache": "writeback",
                                "error_policy": "stop"}),
        element(doc, "source", {"file": path}),
        element(doc, "target", {"dev": name, "bus": "virtio"}),
    ])


def main():
    disks = vmhooks_catalogue.property_or_exit("scratchpad", parse)
    if disks is None:
        return
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        hooking.exit_hook("scratchpad: qemu-img not found in PATH: install it "
                          "(Debian/Ubuntu: qemu-utils, EL/Fedora: qemu-img)", 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    vm_id = os.environ.get("vmId") or vmhooks_catalogue.text_of(domain, "uuid")
    if not vm_id:
        hooking.exit_hook("scratchpad: no vmId and no <uuid>: cannot mark the images", 1)
    devices = vmhooks_catalogue.devices_or_exit("scratchpad", domxml)
    for _, path in disks:
        if not os.path.isdir(os.path.dirname(path)):
            hooking.exit_hook("scratchpad: directory %s does not exist" % os.path.dirname(path), 1)
        if os.path.lexists(path) and not marked_for(path, vm_id):
            hooking.exit_hook("scratchpad: %s exists and is not a scratch disk of this VM: "
                              "refusing to overwrite it" % path, 1)
    created = []
    try:
        for size, path in disks:
            remove(path)  # a leftover of this VM's last run: start clean
            create(qemu_img, size, path, vm_id)
            created.append(path)
    except OSError as exc:
        for path in created:
            remove(path)
        hooking.exit_hook("scratchpad: %s" % exc, 1)
    names = vmhooks_catalogue.free_disk_names(
        "vd", vmhooks_catalogue.target_devs(vmhooks_catalogue.elements(devices, "disk")))
    for size, path in disks:
        name = next(names)
        vmhooks_catalogue.insert_disk(devices, make_disk(domxml, path, name))
        hooking.log("scratchpad: %s scratch disk %s attached as %s" % (size, path, name))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
