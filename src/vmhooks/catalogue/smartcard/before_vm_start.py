#!/usr/bin/python3
"""smartcard: give the VM a smart card reader, passed through from the
SPICE client.

smartcard=true   adds <smartcard mode='passthrough' type='spicevmc'/>
smartcard=false  does nothing

A VM that already has a <smartcard> is left alone.
"""
import os

import hooking
import vmhooks_catalogue


def main():
    if not hooking.tobool(os.environ.get("smartcard")):
        return
    domxml = hooking.read_domxml()
    devices = vmhooks_catalogue.devices_or_exit("smartcard", domxml)
    if devices.getElementsByTagName("smartcard"):
        hooking.log("smartcard: the VM already has a smart card, doing nothing")
        return
    smartcard = vmhooks_catalogue.element(domxml, "smartcard", {"mode": "passthrough", "type": "spicevmc"})
    devices.appendChild(smartcard)
    hooking.log("smartcard: added a passthrough smart card (spicevmc)")
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
