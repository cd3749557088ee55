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

LUN = re.compile(r"[A-Za-z0-9_.-]+\Z")
MAPPER = "/dev/mapper/"


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
    luns = []
    for item in value.split(","):
        lun, sep, option = item.strip().partition(":")
        if not LUN.match(lun) or lun in (".", ".."):
            raise ValueError("LUN id %r: expected letters, digits, '_', '.', '-'" % lun)
        if sep and option != "readonly":
            raise ValueError("LUN %s: unknown option %r (only readonly)" % (lun, option))
        luns.append((lun, bool(sep)))
    return luns


def main():
    value = os.environ.get("directlun")
    if value is None:
        return
    try:
        luns = parse(value)
    except ValueError as exc:
        hooking.exit_hook("directlun: invalid value %r: %s" % (value, exc), 1)
    domxml = hooking.read_domxml()
    devices = elements(domxml.documentElement, "devices")
    if not devices:
        hooking.exit_hook("directlun: the domain has no <devices>", 1)
    devices = devices[0]
    disks = elements(devices, "disk")
    anchor = disks[-1].nextSibling if disks else None
    used, attached = set(), set()
    for disk in disks:
        for target in elements(disk, "target"):
            used.add(target.getAttribute("dev"))
        for source in elements(disk, "source"):
            attached.add(source.getAttribute("dev"))
    index, added = 0, []
    for lun, readonly in luns:
        path = MAPPER + lun
        if path in attached:
            hooking.log("directlun: %s is already attached, skipped" % path)
            continue
        while disk_name("vd", index) in used:
            index += 1
        name = disk_name("vd", index)
        used.add(name)
        attached.add(path)
        disk = domxml.createElement("disk")
        disk.setAttribute("type", "block")
        disk.setAttribute("device", "disk")
        driver = domxml.createElement("driver")
        for attribute, text in (("name", "qemu"), ("type", "raw"), ("cache", "none"), ("io", "native")):
            driver.setAttribute(attribute, text)
        source = domxml.createElement("source")
        source.setAttribute("dev", path)
        target = domxml.createElement("target")
        target.setAttribute("dev", name)
        target.setAttribute("bus", "virtio")
        for element in (driver, source, target):
            disk.appendChild(element)
        if readonly:
            disk.appendChild(domxml.createElement("readonly"))
        devices.insertBefore(disk, anchor)
        if not os.path.exists(path):
            hooking.log("directlun: warning: %s does not exist on this host" % path)
        added.append("%s as %s%s" % (path, name, " (read-only)" if readonly else ""))
    if added:
        hooking.log("directlun: attached %s" % ", ".join(added))
        hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
