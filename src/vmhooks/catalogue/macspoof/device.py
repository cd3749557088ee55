#!/usr/bin/python3
"""macspoof (device points: before_device_create, before_nic_hotplug): let
one vNIC send with any MAC address.

device property ifacemacspoof=true removes <filterref
filter='vdsm-no-mac-spoofing'/> (and any other *no-mac-spoofing filter)
from the <interface>.
"""
import os

import hooking
import vmhooks_catalogue


def main():
    if not hooking.tobool(os.environ.get("ifacemacspoof")):
        return
    domxml = hooking.read_domxml()
    interface = domxml.documentElement
    removed = vmhooks_catalogue.remove_children(
        interface, "filterref", lambda node: node.getAttribute("filter").endswith("no-mac-spoofing"))
    if not removed:
        hooking.log("macspoof: no no-mac-spoofing filter on this interface")
        return
    hooking.log("macspoof: removed the no-mac-spoofing filter")
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
