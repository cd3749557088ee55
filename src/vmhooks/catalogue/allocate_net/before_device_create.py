#!/usr/bin/python3
"""allocate_net: spread vNICs over equivalent networks.

device property equivnets="net1 net2 net3": the <interface> is connected to
one of them, picked at random. A bridge interface gets <source
bridge='netN'/> (oVirt networks are bridges of the same name), a network
interface <source network='netN'/>; any other type becomes a bridge one.
A name with '/': exit 1.
"""
import os
import random

import hooking
import vmhooks_catalogue


def main():
    value = os.environ.get("equivnets")
    if value is None:
        return
    networks = value.split()
    if not networks or any("/" in name for name in networks):
        hooking.exit_hook("allocate_net: invalid equivnets %r: expected network names "
                          "separated by blanks" % value, 1)
    network = random.SystemRandom().choice(networks)
    domxml = hooking.read_domxml()
    interface = domxml.documentElement
    if interface.tagName != "interface":
        hooking.exit_hook("allocate_net: expected an <interface> device, got <%s>" % interface.tagName, 1)
    kind = interface.getAttribute("type")
    if kind not in ("bridge", "network"):
        kind = "bridge"
        interface.setAttribute("type", kind)
    vmhooks_catalogue.set_interface_source(domxml, interface, kind, network)
    hooking.log("allocate_net: interface connected to %s %r (picked among %s)"
                % (kind, network, " ".join(networks)))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
