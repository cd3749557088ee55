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
import vmhooks_catalogue

child = vmhooks_catalogue.child


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


def free_target(devices, prefix, limit):
    """The first free `prefix` name among the first `limit`, judged by the
    first <target> of each disk; None when all are taken."""
    used = set()
    for disk in vmhooks_catalogue.elements(devices, "disk"):
        target = child(disk, "target")
        if target is not None:
            used.add(target.getAttribute("dev"))
    return next(vmhooks_catalogue.free_disk_names(prefix, used, limit), None)


def make_cdrom(doc, host, port, path, query, target_dev, bus):
    element = vmhooks_catalogue.element
    return element(doc, "disk", {"type": "network", "device": "cdrom"}, [
        element(doc, "driver", {"name": "qemu", "type": "raw"}),
        element(doc, "source", {"protocol": "https", "name": path + ("?" + query if query else "")}, [
            element(doc, "host", {"name": host, "port": str(port)}),
        ]),
        element(doc, "target", {"dev": target_dev, "bus": bus, "tray": "closed"}),
        doc.createElement("readonly"),
    ])


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
    devices = vmhooks_catalogue.ensure_child(domxml, domain, "devices")
    os_element = child(domain, "os")
    os_type = child(os_element, "type") if os_element is not None else None
    q35 = os_type is not None and "q35" in os_type.getAttribute("machine")
    prefix, bus, limit = ("sd", "sata", 26 * 27) if q35 else ("hd", "ide", 4)
    target_dev = free_target(devices, prefix, limit)
    if target_dev is None:
        hooking.exit_hook("httpsisoboot: no free %s slot for the CD-ROM" % bus.upper(), 1)
    cdrom = make_cdrom(domxml, host, port, path, query, target_dev, bus)
    vmhooks_catalogue.insert_disk(devices, cdrom)
    vmhooks_catalogue.boot_first(domxml, domain, devices, cdrom)
    hooking.log("httpsisoboot: booting from https://%s:%d%s (%s)" % (host, port, path, target_dev))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
