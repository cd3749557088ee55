#!/usr/bin/python3
"""smbios: set SMBIOS system entries (what dmidecode shows in the guest).

smbios={'serial': '1234'}^{'vendor': 'oVirt', 'family': 'virt'}

Python dict literals joined by '^'. Each key/value becomes an
<entry name='KEY'>VALUE</entry> of <sysinfo type='smbios'>: in <bios> for
the BIOS fields vendor, version, date and release (as the VDSM hook does),
in <system> for any other name (manufacturer, product, serial, uuid, sku,
family). An entry of that name is replaced, a new one appended. <sysinfo>
and <os><smbios mode='sysinfo'/> are added when missing. A malformed value:
exit 1, nothing changed.
"""
import ast
import re

import hooking
import vmhooks_catalogue

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
BIOS_ENTRIES = ("vendor", "version", "date", "release")


child = vmhooks_catalogue.child


def set_entry(doc, sysinfo, block_tag, name, text):
    block = child(sysinfo, block_tag)
    if block is None:
        block = doc.createElement(block_tag)
        if block_tag == "bios":
            sysinfo.insertBefore(block, sysinfo.firstChild)
        else:
            sysinfo.appendChild(block)
    entry = None
    for candidate in block.getElementsByTagName("entry"):
        if candidate.getAttribute("name") == name:
            entry = candidate
            break
    if entry is None:
        entry = doc.createElement("entry")
        entry.setAttribute("name", name)
        block.appendChild(entry)
    while entry.firstChild is not None:
        entry.removeChild(entry.firstChild)
    entry.appendChild(doc.createTextNode(text))


def parse(value):
    """The entries, in order; a later dict wins for the same key."""
    entries = {}
    for part in split_dicts(value):
        try:
            parsed = ast.literal_eval(part)
        except Exception:  # SyntaxError, ValueError, RecursionError...
            raise ValueError("%r is not a Python dict literal" % part)
        if not isinstance(parsed, dict):
            raise ValueError("%r is not a dict" % part)
        for key, item in parsed.items():
            if not isinstance(key, str) or not NAME.match(key):
                raise ValueError("entry name %r is not a name" % (key,))
            if isinstance(item, (dict, list, tuple, set)) or item is None:
                raise ValueError("entry %s: the value must be a string or a number" % key)
            entries[key] = str(item)
    if not entries:
        raise ValueError("no entries")
    return entries


def split_dicts(value):
    """Split on the '^' between dicts ('}^{'), not on a '^' inside a value."""
    parts = re.split(r"(?<=\})\s*\^\s*(?=\{)", value.strip())
    return [part for part in parts if part.strip()]


def main():
    entries = vmhooks_catalogue.property_or_exit("smbios", parse)
    if entries is None:
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    sysinfo = None
    for node in domain.getElementsByTagName("sysinfo"):
        if node.parentNode is domain and node.getAttribute("type") in ("", "smbios"):
            sysinfo = node
            break
    if sysinfo is None:
        sysinfo = domxml.createElement("sysinfo")
        sysinfo.setAttribute("type", "smbios")
        domain.insertBefore(sysinfo, child(domain, "os"))  # None: at the end
    for name, text in entries.items():
        set_entry(domxml, sysinfo, "bios" if name in BIOS_ENTRIES else "system", name, text)
    os_element = child(domain, "os")
    if os_element is not None:
        smbios = child(os_element, "smbios")
        if smbios is None:
            smbios = domxml.createElement("smbios")
            os_element.appendChild(smbios)
            smbios.setAttribute("mode", "sysinfo")
        elif smbios.getAttribute("mode") != "sysinfo":
            hooking.log("smbios: note: <os><smbios mode=%r>: the guest does not see these "
                        "entries unless the mode is 'sysinfo'" % smbios.getAttribute("mode"))
    hooking.log("smbios: set %s" % ", ".join("%s=%r" % item for item in entries.items()))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
