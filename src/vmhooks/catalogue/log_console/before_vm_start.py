#!/usr/bin/python3
"""log_console: log the VM's serial console to a file on the host.

log_console=on   the VM's first <serial> gets
                   <log file='/var/log/libvirt/qemu/VMNAME-console.log' append='on'/>
log_console=off  does nothing

Without the property, the VMs whose name matches the regex in
log_console_vm_regexp (set in the agent's environment) are logged too.
A VM without a <serial> device, or whose serial already has a <log>, is left
alone. Other values: exit 1. VMHOOKS_CONSOLE_LOG_DIR in the agent's
environment changes the directory.
"""
import os
import re

import hooking
import vmhooks_catalogue

DEFAULT_DIR = "/var/log/libvirt/qemu"


elements = vmhooks_catalogue.elements
text_of = vmhooks_catalogue.text_of


def main():
    value = os.environ.get("log_console")
    if value not in (None, "on", "off"):
        hooking.exit_hook("log_console: invalid value %r: expected on or off" % value, 1)
    vm_regexp = os.environ.get("log_console_vm_regexp")
    if value == "off" or (value is None and not vm_regexp):
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    name = text_of(domain, "name")
    if value is None:
        try:
            if not re.match(vm_regexp, name):
                return
        except re.error as exc:
            hooking.exit_hook("log_console: invalid log_console_vm_regexp %r: %s" % (vm_regexp, exc), 1)
    devices = elements(domain, "devices")
    serials = elements(devices[0], "serial") if devices else []
    if not serials:
        hooking.log("log_console: the VM has no serial console, doing nothing")
        return
    serial = serials[0]
    if elements(serial, "log"):
        hooking.log("log_console: the serial console is already logged, doing nothing")
        return
    safe_name = (name or text_of(domain, "uuid") or "vm").replace("/", "_")
    directory = os.environ.get("VMHOOKS_CONSOLE_LOG_DIR") or DEFAULT_DIR
    path = os.path.join(directory, "%s-console.log" % safe_name)
    serial.appendChild(vmhooks_catalogue.element(domxml, "log", {"file": path, "append": "on"}))
    hooking.log("log_console: serial console logged to %s" % path)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
