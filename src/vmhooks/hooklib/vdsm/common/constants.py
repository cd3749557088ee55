"""`vdsm.common.constants`: VDSM's users, paths and the external tools it runs.

Paths that hooks use to find the agent's state follow the vmhooks agent
that runs them: `P_VDSM_RUN` is its run directory (where per-VM files
such as launch flags live), `P_VDSM_HOOKS` its hooks root, `SYSCONF_PATH`
and `P_VDSM_CONF` follow `VMHOOKS_SYSCONF_DIR`. `EXT_*` are the tools
found on this host (searched on PATH and the sbin directories the first
time a name is used; the usual path when absent).
"""
from __future__ import annotations

import os

from vdsm._compat import agent_setting

VDSM_USER = "vdsm"
VDSM_GROUP = "kvm"
DISKIMAGE_USER = "vdsm"
DISKIMAGE_GROUP = "qemu"
METADATA_USER = "vdsm"
METADATA_GROUP = "kvm"
QEMU_PROCESS_USER = "qemu"
QEMU_PROCESS_GROUP = "qemu"
OVIRT_VMCONSOLE_USER = "ovirt-vmconsole"
OVIRT_VMCONSOLE_GROUP = "ovirt-vmconsole"
SANLOCK_ENABLED = False
SANLOCK_USER = "sanlock"
LIBVIRT_SELINUX = False
GLUSTER_MGMT_ENABLED = False

P_LIBVIRT_NVRAM = "/var/lib/libvirt/qemu/nvram"
P_LIBVIRT_SWTPM = "/var/lib/libvirt/swtpm"
P_LIBVIRT_VMCHANNELS = "/var/lib/libvirt/qemu/channels/"
P_OVIRT_VMCONSOLES = "/var/run/ovirt-vmconsole-console/"
P_VDSM = "/usr/share/vdsm/"
P_VDSM_LIB = "/var/lib/vdsm/"
P_TRANSIENT_DISKS = "/var/lib/vdsm/transient/"
P_BACKUP = "/run/vdsm/backup/"
P_VDSM_LOG = "/var/log/vdsm"
P_VDSM_EXEC = "/usr/libexec/vdsm"

EXT_SH = "/bin/sh"
EXT_CURL_IMG_WRAP = P_VDSM_EXEC + "/curl-img-wrap"
EXT_FC_SCAN = P_VDSM_EXEC + "/fc-scan"
EXT_KVM_2_OVIRT = P_VDSM_EXEC + "/kvm2ovirt"

# EXT_* name -> the program looked up on this host.
TOOLS = {
    "EXT_CHOWN": "chown", "EXT_DD": "dd", "EXT_DMSETUP": "dmsetup", "EXT_FSCK": "fsck",
    "EXT_FUSER": "fuser", "EXT_GREP": "grep", "EXT_IONICE": "ionice", "EXT_ISCSIADM": "iscsiadm",
    "EXT_KILL": "kill", "EXT_LVM": "lvm", "EXT_MKFS": "mkfs", "EXT_MKFS_MSDOS": "mkfs.msdos",
    "EXT_MKISOFS": "mkisofs", "EXT_MOUNT": "mount", "EXT_NICE": "nice", "EXT_PRLIMIT": "prlimit",
    "EXT_SETSID": "setsid", "EXT_SU": "su", "EXT_SUDO": "sudo", "EXT_TAR": "tar",
    "EXT_TASKSET": "taskset", "EXT_TUNE2FS": "tune2fs", "EXT_UMOUNT": "umount",
    "EXT_SAFELEASE": "safelease",
}  # fmt: skip
SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find_tool(program: str) -> str:
    """The program's path on this host, else where distributions put it."""
    import shutil

    search = os.pathsep.join([*os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_PATH])
    return shutil.which(program, path=search) or "/usr/bin/" + program


def _dynamic(name: str) -> str | None:
    """Values that depend on this host or on the agent running the hook."""
    if name in TOOLS:
        return find_tool(TOOLS[name])
    if name == "EXT_FENCE_PREFIX":
        return os.path.dirname(find_tool("fence_ipmilan")) + "/fence_"
    if name == "P_VDSM_RUN":
        return agent_setting("_hook_rundir", "/run/vdsm").rstrip("/") + "/"
    if name == "P_VDSM_HOOKS":
        return agent_setting("VMHOOKS_HOOKS_DIR", "/usr/libexec/vdsm/hooks").rstrip("/") + "/"
    if name == "SYSCONF_PATH":
        return agent_setting("VMHOOKS_SYSCONF_DIR", "/etc")
    if name == "P_VDSM_CONF":
        return agent_setting("VMHOOKS_SYSCONF_DIR", "/etc").rstrip("/") + "/vdsm/"
    return None


def __getattr__(name: str) -> str:
    value = _dynamic(name)
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [name for name in globals() if name.isupper() and name not in ("TOOLS", "SYSTEM_PATH")] + [
    *TOOLS, "EXT_FENCE_PREFIX", "P_VDSM_RUN", "P_VDSM_HOOKS", "SYSCONF_PATH", "P_VDSM_CONF",
]  # fmt: skip
