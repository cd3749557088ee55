#!/usr/bin/python3
"""extnet: connect a vNIC to a libvirt network defined on the host (one the
management layer does not know, e.g. an Open vSwitch network).

device property extnet=NETNAME, at before_device_create and
before_nic_hotplug (the payload is the <interface>):

  <interface type='bridge'><source bridge='ovirtmgmt'/>...
becomes
  <interface type='network'><source network='NETNAME'/>...

The rest of the interface (MAC, model, filterref...) is kept. A name with
'/' or blanks: exit 1.
"""
import os
import re

import hooking
import vmhooks_catalogue


def main():
    network = os.environ.get("extnet")
    if network is None:
        return
    if not re.match(r"[^\s/]+\Z", network):
        hooking.exit_hook("extnet: invalid network name %r" % network, 1)
    domxml = hooking.read_domxml()
    interface = domxml.documentElement
    if interface.tagName != "interface":
        hooking.exit_hook("extnet: expected an <interface> device, got <%s>" % interface.tagName, 1)
    old = interface.getAttribute("type")
    interface.setAttribute("type", "network")
    vmhooks_catalogue.set_interface_source(domxml, interface, "network", network)
    hooking.log("extnet: interface (was type %r) now on libvirt network %r" % (old, network))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
