"""`vdsm.osinfo`: facts about the host OS and kernel that hooks ask for.

`nested_virtualization()` reads the kvm module's `nested` parameter under
/sys/module (`VMHOOKS_SYS_MODULE_DIR` replaces that directory, for tests).
Questions answered through supervdsm or package databases on VDSM raise
NotAvailableError.
"""
from __future__ import annotations

import os
from collections import namedtuple

from vdsm._compat import agent_setting, unavailable
from vdsm.common import cpuarch

KernelFlags = namedtuple("KernelFlags", "version, realtime")
NestedVirtualization = namedtuple("NestedVirtualization", "enabled, kvm_module")


class OSName:
    UNKNOWN = "unknown"
    OVIRT = "oVirt Node"
    RHEL = "RHEL"
    FEDORA = "Fedora"
    RHEVH = "RHEV Hypervisor"
    DEBIAN = "Debian"


def nested_virtualization() -> NestedVirtualization:
    """Whether the loaded kvm module lets guests run VMs, and which module."""
    arch = cpuarch.real()
    if cpuarch.is_ppc(arch):
        return NestedVirtualization(False, None)
    modules = ("kvm",) if cpuarch.is_s390(arch) else ("kvm_intel", "kvm_amd")
    root = agent_setting("VMHOOKS_SYS_MODULE_DIR", "/sys/module")
    for module in modules:
        try:
            with open(os.path.join(root, module, "parameters", "nested")) as handle:
                if handle.readline().strip() in ("Y", "1"):
                    return NestedVirtualization(True, module)
        except FileNotFoundError:
            continue
        except OSError:  # unreadable: as on VDSM, this module does not count
            continue
    return NestedVirtualization(False, None)


def kernel_args(path: str = "/proc/cmdline") -> str:
    with open(path) as handle:
        return handle.readline().strip()


def kernel_args_dict(path: str = "/proc/cmdline") -> dict[str, str]:
    """The `key=value` words of the kernel command line (others are left out)."""
    result = {}
    for option in kernel_args(path).split(" "):
        key, sep, value = option.partition("=")
        if sep and "=" not in value:
            result[key] = value
    return result


def runtime_kernel_flags() -> KernelFlags:
    uname = os.uname()
    version, sep, release = uname.release.partition("-")
    if not sep:
        version, release = "0", "0"
    return KernelFlags({"version": version, "release": release}, "RT" in uname.version)


def version() -> dict[str, str]:
    """name, version, release and pretty_name of the OS (/etc/os-release)."""
    import platform

    try:
        fields = platform.freedesktop_os_release()  # Python 3.10+
    except (OSError, AttributeError):
        fields = {}
    names = {"debian": OSName.DEBIAN, "ubuntu": OSName.DEBIAN, "fedora": OSName.FEDORA, "rhel": OSName.RHEL}
    return {
        "release": "",
        "version": fields.get("VERSION_ID", ""),
        "name": names.get(fields.get("ID", ""), OSName.UNKNOWN),
        "pretty_name": fields.get("PRETTY_NAME", ""),
    }


kernel_features = unavailable("vdsm.osinfo.kernel_features", "it is asked of supervdsm, which vmhooks does not run")
package_versions = unavailable("vdsm.osinfo.package_versions", "vmhooks does not report oVirt package versions")
