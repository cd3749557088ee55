#!/usr/bin/python3
"""vmdisk: attach extra disk images (files on the host) to the VM.

vmdisk=/images/a.img:qcow2,/images/b.img:raw adds, per image,

  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2' cache='none'/>
    <source file='/images/a.img'/>
    <target dev='vdb' bus='virtio'/>
  </disk>

on the first free vdX names. An image already attached is skipped. A
relative path or a format other than qcow2 or raw: exit 1, nothing changed.
"""

import hooking
import vmhooks_catalogue

FORMATS = ("qcow2", "raw")


def parse(value):
    images = []
    for item in value.split(","):
        path, sep, fmt = item.strip().rpartition(":")
        if not sep or not path.startswith("/"):
            raise ValueError("%r: expected /absolute/path:FORMAT" % item)
        if fmt not in FORMATS:
            raise ValueError("%r: the format must be qcow2 or raw, not %r" % (item, fmt))
        images.append((path, fmt))
    return images


def make_disk(doc, path, fmt, name):
    element = vmhooks_catalogue.element
    return element(doc, "disk", {"type": "file", "device": "disk"}, [
        element(doc, "driver", {"name": "qemu", "type": fmt, "cache": "none"}),
        element(doc, "source", {"file": path}),
        element(doc, "target", {"dev": name, "bus": "virtio"}),
    ])


def main():
    images = vmhooks_catalogue.property_or_exit("vmdisk", parse)
    if images is None:
        return
    domxml = hooking.read_domxml()
    devices = vmhooks_catalogue.devices_or_exit("vmdisk", domxml)
    disks = vmhooks_catalogue.elements(devices, "disk")
    names = vmhooks_catalogue.free_disk_names("vd", vmhooks_catalogue.target_devs(disks))
    attached = vmhooks_catalogue.source_values(disks, "file")
    added = []
    for path, fmt in images:
        if path in attached:
            hooking.log("vmdisk: %s is already attached, skipped" % path)
            continue
        name = next(names)
        attached.add(path)
        vmhooks_catalogue.insert_disk(devices, make_disk(domxml, path, fmt, name))
        added.append("%s as %s (%s)" % (path, name, fmt))
    if added:
        hooking.log("vmdisk: attached %s" % ", ".join(added))
        hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
