#!/usr/bin/python3
"""httpsisoboot: boot the VM from an ISO image served over HTTPS.

httpsisoboot=https://images.example.com[:8443]/isos/install.iso

adds a read-only CD-ROM that QEMU reads over HTTPS, and boots from it first:

  <disk type='network' device='cdrom'>
    <driver name='qemu' type='raw'/>
    <source protocol='https' name='/isos/install.iso'>
      <host name='images.example.com' port='443'/>
    </source>
    <target dev='hda' bus='ide' tray='closed'/>   (sata and sdX on q35 machines)
    <readonly/>
    <boot order='1'/>
  </disk>

Every other device boot order goes up by one; a legacy <os><boot dev=...>
list (libvirt refuses it beside device boot orders) becomes device boot
orders first. A query string stays in the name (name='/path?query'). Anything but a
well-formed https:// URL: exit 2, nothing changed.
"""
import os
from urllib.parse import urlsplit

import hooking

OS_BOOT_DEVICES = {"hd": ("disk", ("disk", "lun")), "cdrom": ("disk", ("cdrom",)),
                   "fd": ("disk", ("floppy",)), "network": ("interface", None)}


def elements(parent, tag=None):
    return [node for node in parent.childNodes
            if node.nodeType == node.ELEMENT_NODE and (tag is None or node.tagName == tag)]


def child(parent, tag):
    found = elements(parent, tag)
    return found[0] if found else None


def parse_url(url):
    """(host, port, path, query); ValueError saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ValueError("malformed URL (%s)" % exc)
    if parts.scheme.lower() != "https":
        raise ValueError("only https:// URLs are supported")
    if not parts.hostname:
        raise ValueError("no host name")
    if not parts.path or parts.path.endswith("/"):
        raise ValueError("no image path")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not supported")
    return parts.hostname, port, parts.path, parts.query


def disk_name(prefix, index):
    suffix = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        suffix = chr(ord("a") + rest) + suffix
    return prefix + suffix


def free_target(devices, prefix, limit):
    used = set()
    for disk in elements(devices, "disk"):
        target = child(disk, "target")
        if target is not None:
            used.add(target.getAttribute("dev"))
    for index in range(limit):
        name = disk_name(prefix, index)
        if name not in used:
            return name
    return None


def number(text):
    try:
        return int((text or "").strip())
    except ValueError:
        return 1 << 30


def boot_order(device):
    boot = child(device, "boot")
    if boot is None or not boot.hasAttribute("order"):
        return None
    return number(boot.getAttribute("order"))


def set_boot_order(doc, device, order):
    boot = child(device, "boot")
    if boot is None:
        boot = doc.createElement("boot")
        device.appendChild(boot)
    boot.setAttribute("order", str(order))


def convert_os_boot(doc, domain, devices):
    os_element = child(domain, "os")
    boots = elements(os_element, "boot") if os_element is not None else []
    if not boots:
        return
    wanted = [boot.getAttribute("dev") for boot in boots]
    for boot in boots:
        os_element.removeChild(boot)
    if any(boot_order(device) is not None for device in elements(devices)):
        return
    order = 1
    for dev in wanted:
        tag, kinds = OS_BOOT_DEVICES.get(dev, (None, None))
        for device in elements(devices, tag) if tag else ():
            if kinds is None or (device.getAttribute("device") or "disk") in kinds:
                set_boot_order(doc, device, order)
                order += 1
                break


def boot_first(doc, domain, devices, first):
    """`first` gets boot order 1; every other device boot order goes up by one."""
    convert_os_boot(doc, domain, devices)
    for device in elements(devices):
        order = boot_order(device)
        if device is not first and order is not None:
            set_boot_order(doc, device, order + 1)
    set_boot_order(doc, first, 1)


def make_cdrom(doc, host, port, path, query, target_dev, bus):
    disk = doc.createElement("disk")
    disk.setAttribute("type", "network")
    disk.setAttribute("device", "cdrom")
    driver = doc.createElement("driver")
    driver.setAttribute("name", "qemu")
    driver.setAttribute("type", "raw")
    source = doc.createElement("source")
    source.setAttribute("protocol", "https")
    source.setAttribute("name", path + ("?" + query if query else ""))
    host_element = doc.createElement("host")
    host_element.setAttribute("name", host)
    host_element.setAttribute("port", str(port))
    source.appendChild(host_element)
    target = doc.createElement("target")
    target.setAttribute("dev", target_dev)
    target.setAttribute("bus", bus)
    target.setAttribute("tray", "closed")
    for element in (driver, source, target, doc.createElement("readonly")):
        disk.appendChild(element)
    return disk


def main():
    url = os.environ.get("httpsisoboot")
    if url is None:
        return
    try:
        host, port, path, query = parse_url(url.strip())
    except ValueError as exc:
        hooking.exit_hook("httpsisoboot: refusing %r: %s" % (url, exc), 2)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    devices = child(domain, "devices")
    if devices is None:
        devices = domxml.createElement("devices")
        domain.appendChild(devices)
    os_element = child(domain, "os")
    os_type = child(os_element, "type") if os_element is not None else None
    q35 = os_type is not None and "q35" in os_type.getAttribute("machine")
    prefix, bus, limit = ("sd", "sata", 26 * 27) if q35 else ("hd", "ide", 4)
    target_dev = free_target(devices, prefix, limit)
    if target_dev is None:
        hooking.exit_hook("httpsisoboot: no free %s slot for the CD-ROM" % bus.upper(), 1)
    cdrom = make_cdrom(domxml, host, port, path, query, target_dev, bus)
    disks = elements(devices, "disk")
    anchor = disks[-1].nextSibling if disks else None
    devices.insertBefore(cdrom, anchor)
    boot_first(domxml, domain, devices, cdrom)
    hooking.log("httpsisoboot: booting from https://%s:%d%s (%s)" % (host, port, path, target_dev))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
