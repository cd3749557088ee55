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

MODES = ("interleave", "strict", "preferred")
NODESET = re.compile(r"(\^?[0-9]+|[0-9]+-[0-9]+)(,(\^?[0-9]+|[0-9]+-[0-9]+))*\Z")


def child(parent, tag):
    for node in parent.childNodes:
        if node.nodeType == node.ELEMENT_NODE and node.tagName == tag:
            return node
    return None


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
    numatune = child(domain, "numatune")
    if numatune is not None and child(numatune, "memory") is not None:
        hooking.log("numa: <numatune> already has a <memory> policy, doing nothing")
        return
    if numatune is None:
        numatune = domxml.createElement("numatune")
        anchor = child(domain, "cputune")
        if anchor is None:
            anchor = child(domain, "vcpu")
        if anchor is not None and anchor.nextSibling is not None:
            domain.insertBefore(numatune, anchor.nextSibling)
        else:
            domain.appendChild(numatune)
    memory = domxml.createElement("memory")
    memory.setAttribute("mode", mode)
    memory.setAttribute("nodeset", nodeset)
    numatune.insertBefore(memory, numatune.firstChild)
    hooking.log("numa: memory policy %s on nodes %s" % (mode, nodeset))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
