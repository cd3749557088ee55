#!/usr/bin/python3
"""macspoof (device points: before_device_create, before_nic_hotplug): let
one vNIC send with any MAC address.

device property ifacemacspoof=true removes <filterref
filter='vdsm-no-mac-spoofing'/> (and any other *no-mac-spoofing filter)
from the <interface>.
"""
import os

import hooking


def main():
    if not hooking.tobool(os.environ.get("ifacemacspoof")):
        return
    domxml = hooking.read_domxml()
    interface = domxml.documentElement
    removed = 0
    for node in list(interface.childNodes):
        if node.nodeType == node.ELEMENT_NODE and node.tagName == "filterref" \
                and node.getAttribute("filter").endswith("no-mac-spoofing"):
            interface.removeChild(node)
            removed += 1
    if not removed:
        hooking.log("macspoof: no no-mac-spoofing filter on this interface")
        return
    hooking.log("macspoof: removed the no-mac-spoofing filter")
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
