#!/usr/bin/python3
"""numa: set the VM's NUMA memory policy.

numa=strict:1-4,^3      <numatune><memory mode='strict' nodeset='1-4,^3'/></numatune>
numa=interleave:0-1
numa=preferred:0

An existing <numatune><memory> is left alone. A malformed value: exit 1.
"""
import os
import re

import hooking
import vmhooks_catalogue

MODES = ("interleave", "strict", "preferred")
NODESET = re.compile(r"(\^?[0-9]+|[0-9]+-[0-9]+)(,(\^?[0-9]+|[0-9]+-[0-9]+))*\Z")


def parse(value):
    mode, sep, nodeset = value.partition(":")
    if not sep or mode not in MODES:
        return None, None, "expected MODE:NODESET with MODE one of %s" % ", ".join(MODES)
    if not NODESET.match(nodeset):
        return None, None, "nodeset %r: expected N, N-M or ^N, comma separated" % nodeset
    return mode, nodeset, None


def main():
    value = os.environ.get("numa")
    if value is None:
        return
    mode, nodeset, problem = parse(value)
    if problem:
        hooking.exit_hook("numa: invalid value %r: %s" % (value, problem), 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    numatune = vmhooks_catalogue.child(domain, "numatune")
    if numatune is not None and vmhooks_catalogue.child(numatune, "memory") is not None:
        hooking.log("numa: <numatune> already has a <memory> policy, doing nothing")
        return
    if numatune is None:
        numatune = domxml.createElement("numatune")
        vmhooks_catalogue.insert_after_first(domain, numatune, ("cputune", "vcpu"))
    memory = vmhooks_catalogue.element(domxml, "memory", {"mode": mode, "nodeset": nodeset})
    numatune.insertBefore(memory, numatune.firstChild)
    hooking.log("numa: memory policy %s on nodes %s" % (mode, nodeset))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
