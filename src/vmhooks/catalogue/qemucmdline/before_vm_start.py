#!/usr/bin/python3
"""qemucmdline: pass extra arguments to QEMU.

qemu_cmdline=["-cpu","host,+invtsc"]

adds, in libvirt's QEMU namespace,
  <qemu:commandline><qemu:arg value='-cpu'/><qemu:arg value='host,+invtsc'/></qemu:commandline>
appending to an existing <qemu:commandline>. A value that is not a JSON
list of strings: exit 1.
"""
import json
import os

import hooking

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"


def parse(value):
    try:
        args = json.loads(value)
    except ValueError as exc:
        return None, "not valid JSON (%s)" % exc
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        return None, "expected a JSON list of strings, e.g. [\"-opt\",\"value\"]"
    return args, None


def qemu_prefix(domain):
    """The prefix bound to the QEMU namespace on the root, binding 'qemu'
    (or a free variant of it) when there is none."""
    for index in range(domain.attributes.length):
        attr = domain.attributes.item(index)
        if attr.name.startswith("xmlns:") and attr.value == QEMU_NS:
            return attr.name[len("xmlns:"):]
    prefix, number = "qemu", 0
    while domain.hasAttribute("xmlns:" + prefix):
        number += 1
        prefix = "qemu%d" % number
    domain.setAttributeNS(XMLNS_NS, "xmlns:" + prefix, QEMU_NS)
    return prefix


def main():
    value = os.environ.get("qemu_cmdline")
    if value is None:
        return
    args, problem = parse(value)
    if problem:
        hooking.exit_hook("qemucmdline: invalid qemu_cmdline %r: %s" % (value, problem), 1)
    if not args:
        hooking.log("qemucmdline: empty list, doing nothing")
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    prefix = qemu_prefix(domain)
    commandline = None
    for node in domain.childNodes:
        if node.nodeType == node.ELEMENT_NODE and node.namespaceURI == QEMU_NS \
                and node.localName == "commandline":
            commandline = node
            break
    if commandline is None:
        commandline = domxml.createElementNS(QEMU_NS, prefix + ":commandline")
        domain.appendChild(commandline)
    else:
        prefix = commandline.prefix or prefix
    for arg in args:
        element = domxml.createElementNS(QEMU_NS, prefix + ":arg")
        element.setAttribute("value", arg)
        commandline.appendChild(element)
    hooking.log("qemucmdline: added QEMU arguments %s" % " ".join(args))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
