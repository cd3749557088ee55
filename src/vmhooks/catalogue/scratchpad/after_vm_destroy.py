#!/usr/bin/python3
"""scratchpad: remove the VM's scratch disks once it is down.

Looks at the paths of the `scratchpad` property and at the file disks of
the VM's last known XML, and removes each one whose PATH.vmhooks-scratchpad
mark names this VM (and the mark). Anything else is never touched.
"""
import os

import hooking

MARK = ".vmhooks-scratchpad"


def candidates(value, domxml):
    paths = []
    for item in (value or "").split(":"):
        size, sep, path = item.strip().partition(",")
        if sep and path.startswith("/"):
            paths.append(path)
    if domxml is not None:
        for disk in domxml.getElementsByTagName("disk"):
            for source in disk.getElementsByTagName("source"):
                if source.getAttribute("file"):
                    paths.append(source.getAttribute("file"))
    unique = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def read_domain():
    path = os.environ.get("_hook_domxml")
    if not path or not os.path.getsize(path):
        return None
    try:
        return hooking.read_domxml()
    except Exception:  # an unreadable last XML: fall back to the property
        return None


def main():
    value = os.environ.get("scratchpad")
    domxml = read_domain()
    vm_id = os.environ.get("vmId")
    if not vm_id and domxml is not None:
        uuids = domxml.documentElement.getElementsByTagName("uuid")
        vm_id = uuids[0].firstChild.data.strip() if uuids and uuids[0].firstChild else None
    if not vm_id or (value is None and domxml is None):
        return
    failed = False
    for path in candidates(value, domxml):
        try:
            with open(path + MARK) as handle:
                owner = handle.read().strip()
        except OSError:
            continue
        if owner != vm_id:
            continue
        try:
            if os.path.lexists(path):
                os.unlink(path)
            os.unlink(path + MARK)
            hooking.log("scratchpad: removed scratch disk %s" % path)
        except OSError as exc:
            hooking.log("scratchpad: cannot remove %s: %s" % (path, exc.strerror))
            failed = True
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
