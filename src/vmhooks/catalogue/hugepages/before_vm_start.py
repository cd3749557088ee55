#!/usr/bin/python3
"""hugepages: back the VM's memory with huge pages.

hugepages=512   (MiB) adds <memoryBacking><hugepages/></memoryBacking>

0 turns it off. An existing <hugepages/> is left alone. A value that is not
a number: exit 1. The huge pages themselves must be reserved on the host
(vm.nr_hugepages); libvirt refuses to start the VM when they are missing.
"""
import os
import re

import hooking
import vmhooks_catalogue


child = vmhooks_catalogue.child


def memory_mib(domain):
    memory = child(domain, "memory")
    if memory is None or not memory.firstChild:
        return None
    units = {"b": 1.0 / (1 << 20), "bytes": 1.0 / (1 << 20), "kib": 1.0 / 1024, "k": 1.0 / 1024,
             "mib": 1, "m": 1, "gib": 1024, "g": 1024, "tib": 1 << 20, "t": 1 << 20}
    unit = (memory.getAttribute("unit") or "KiB").lower()
    try:
        return int(memory.firstChild.data.strip()) * units.get(unit, 1.0 / 1024)
    except ValueError:
        return None


def main():
    value = os.environ.get("hugepages")
    if value is None:
        return
    if not re.match(r"[0-9]+\Z", value.strip()):
        hooking.exit_hook("hugepages: invalid value %r: expected a number of MiB" % value, 1)
    mib = int(value)
    if mib == 0:
        hooking.log("hugepages: 0 MiB asked, doing nothing")
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    backing = child(domain, "memoryBacking")
    if backing is not None and child(backing, "hugepages") is not None:
        hooking.log("hugepages: <memoryBacking> already has <hugepages>, doing nothing")
        return
    if backing is None:
        backing = domxml.createElement("memoryBacking")
        vmhooks_catalogue.insert_after_first(domain, backing, ("currentMemory", "memory"))
    backing.appendChild(domxml.createElement("hugepages"))
    guest = memory_mib(domain)
    if guest is not None and guest > mib:
        hooking.log("hugepages: note: the VM has %d MiB of memory, more than the %d MiB asked; "
                    "libvirt backs all of it with huge pages" % (guest, mib))
    hooking.log("hugepages: memory backed by huge pages (%d MiB)" % mib)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
