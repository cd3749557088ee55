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
import os

import hooking

FORMATS = ("qcow2", "raw")


def elements(parent, tag):
    return [node for node in parent.childNodes
            if node.nodeType == node.ELEMENT_NODE and node.tagName == tag]


def disk_name(prefix, index):
    suffix = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        suffix = chr(ord("a") + rest) + suffix
    return prefix + suffix


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


def main():
    value = os.environ.get("vmdisk")
    if value is None:
        return
    try:
        images = parse(value)
    except ValueError as exc:
        hooking.exit_hook("vmdisk: invalid value %r: %s" % (value, exc), 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    devices = elements(domain, "devices")
    if not devices:
        hooking.exit_hook("vmdisk: the domain has no <devices>", 1)
    devices = devices[0]
    disks = elements(devices, "disk")
    anchor = disks[-1].nextSibling if disks else None
    used, attached = set(), set()
    for disk in disks:
        for target in elements(disk, "target"):
            used.add(target.getAttribute("dev"))
        for source in elements(disk, "source"):
            attached.add(source.getAttribute("file"))
    index, added = 0, []
    for path, fmt in images:
        if path in attached:
            hooking.log("vmdisk: %s is already attached, skipped" % path)
            continue
        while disk_name("vd", index) in used:
            index += 1
        name = disk_name("vd", index)
        used.add(name)
        attached.add(path)
        disk = domxml.createElement("disk")
        disk.setAttribute("type", "file")
        disk.setAttribute("device", "disk")
        driver = domxml.createElement("driver")
        driver.setAttribute("name", "qemu")
        driver.setAttribute("type", fmt)
        driver.setAttribute("cache", "none")
        source = domxml.createElement("source")
        source.setAttribute("file", path)
        target = domxml.createElement("target")
        target.setAttribute("dev", name)
        target.setAttribute("bus", "virtio")
        for element in (driver, source, target):
            disk.appendChild(element)
        devices.insertBefore(disk, anchor)
        added.append("%s as %s (%s)" % (path, name, fmt))
    if added:
        hooking.log("vmdisk: attached %s" % ", ".join(added))
        hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
