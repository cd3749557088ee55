#!/usr/bin/python3
"""macspoof: let every interface of the VM send with any MAC address
(nested virtualization, bridges or VRRP in the guest).

macspoof=true   removes <filterref filter='vdsm-no-mac-spoofing'/> (and any
                other *no-mac-spoofing filter) from each <interface>
macspoof=false  does nothing
"""
import os

import hooking
import vmhooks_catalogue


def no_mac_spoofing(filterref):
    return filterref.getAttribute("filter").endswith("no-mac-spoofing")


def remove_filters(interface):
    return vmhooks_catalogue.remove_children(interface, "filterref", no_mac_spoofing)


def main():
    if not hooking.tobool(os.environ.get("macspoof")):
        return
    domxml = hooking.read_domxml()
    removed = sum(remove_filters(interface) for interface in domxml.getElementsByTagName("interface"))
    if not removed:
        hooking.log("macspoof: no no-mac-spoofing filter on the VM's interfaces")
        return
    hooking.log("macspoof: removed %d no-mac-spoofing filter(s)" % removed)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
