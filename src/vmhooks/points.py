"""The table of hook points: what each point hands its scripts and how its
result is used (hook-points.md, one row each)."""
from __future__ import annotations

import difflib
import enum
from typing import NamedTuple

from vmhooks.errors import UnknownPointError


class Payload(enum.Enum):
    DOMAIN = "domain"  # the full libvirt domain XML
    DEVICE = "device"  # one device element (<interface>, <disk>, ...)
    JSON = "json"  # a JSON document
    NONE = "none"  # an empty payload file

    @property
    def is_xml(self) -> bool:
        return self in (Payload.DOMAIN, Payload.DEVICE, Payload.NONE)


class Scope(enum.Enum):
    HOST = "host"  # no vmId, no custom properties
    VM = "vm"  # vmId and the VM's custom properties
    DEVICE = "device"  # vmId and the device's custom properties


class HookPoint(NamedTuple):
    name: str
    payload: Payload
    aborts: bool  # a failing script aborts the operation
    output_used: bool  # the caller acts on the chain's output
    scope: Scope
    params: tuple[str, ...] = ()  # extra environment the caller provides
    extension: bool = False  # a vmhooks point VDSM does not have (not in hook-points.md)

    @property
    def after(self) -> bool:
        """An after_* point: its operation's work is done when it runs."""
        return self.name.startswith("after_")


D, V, J, N = Payload.DEVICE, Payload.DOMAIN, Payload.JSON, Payload.NONE
H, VM, DEV = Scope.HOST, Scope.VM, Scope.DEVICE

_TABLE: tuple[HookPoint, ...] = (
    # name                               payload aborts used  scope
    HookPoint("before_vdsm_start", N, False, False, H),
    HookPoint("after_vdsm_stop", N, False, False, H),
    HookPoint("before_vm_start", V, True, True, VM),
    HookPoint("after_vm_start", V, False, False, VM),
    HookPoint("before_device_create", D, True, True, DEV),
    HookPoint("after_device_create", D, False, False, DEV),
    HookPoint("before_vm_cont", V, True, False, VM),
    HookPoint("after_vm_cont", V, False, False, VM),
    HookPoint("before_vm_pause", V, True, False, VM),
    HookPoint("after_vm_pause", V, False, False, VM),
    HookPoint("before_vm_hibernate", V, True, False, VM),
    HookPoint("after_vm_hibernate", V, False, False, VM),
    # Upstream drops these edits; libvirt takes an XML at restore, so we use it.
    HookPoint("before_vm_dehibernate", V, True, True, VM, ("FROM_SNAPSHOT",)),
    HookPoint("after_vm_dehibernate", V, False, False, VM, ("FROM_SNAPSHOT",)),
    HookPoint("before_vm_migrate_source", V, True, False, VM),
    HookPoint("after_vm_migrate_source", V, False, False, VM),
    # Upstream drops these edits; libvirt takes a destination XML, so we use it.
    HookPoint("before_vm_migrate_destination", V, True, True, VM),
    HookPoint("after_vm_migrate_destination", V, False, False, VM),
    HookPoint("before_device_migrate_source", D, True, False, DEV),
    HookPoint("after_device_migrate_source", D, False, False, DEV),
    HookPoint("before_device_migrate_destination", D, True, False, DEV),
    HookPoint("after_device_migrate_destination", D, False, False, DEV),
    HookPoint("before_vm_destroy", N, False, False, VM),
    HookPoint("after_vm_destroy", V, False, False, VM),
    HookPoint("before_device_destroy", D, True, False, DEV),
    HookPoint("after_device_destroy", D, False, False, DEV),
    HookPoint("before_vm_set_ticket", V, False, False, VM, ("userName", "userId")),
    HookPoint("after_vm_set_ticket", V, False, False, VM, ("userName", "userId")),
    HookPoint("before_nic_hotplug", D, True, True, DEV),
    HookPoint("after_nic_hotplug", D, False, False, DEV),
    HookPoint("after_nic_hotplug_fail", D, False, False, DEV),
    HookPoint("before_nic_hotunplug", D, True, False, DEV),
    HookPoint("after_nic_hotunplug", D, False, False, DEV),
    HookPoint("after_nic_hotunplug_fail", D, False, False, DEV),
    HookPoint("before_disk_hotplug", D, True, True, DEV),
    HookPoint("after_disk_hotplug", D, False, False, DEV),
    HookPoint("before_disk_hotunplug", D, True, False, DEV),
    HookPoint("after_disk_hotunplug", D, False, False, DEV),
    HookPoint("before_update_device", D, True, True, DEV),
    HookPoint("after_update_device", D, False, False, DEV),
    HookPoint("after_update_device_fail", D, False, False, DEV),
    HookPoint("before_memory_hotplug", D, True, True, DEV),
    HookPoint("after_memory_hotplug", D, False, False, DEV),
    # Upstream passes no vmId here; we do.
    HookPoint("before_set_num_of_cpus", N, True, False, VM),
    HookPoint("after_set_num_of_cpus", N, False, False, VM),
    HookPoint("after_disk_prepare", J, True, True, VM),
    HookPoint("before_network_setup", J, True, True, H),
    HookPoint("after_network_setup", J, False, False, H),
    HookPoint("after_network_setup_fail", J, False, False, H),
    HookPoint("before_get_caps", J, True, False, H),
    HookPoint("after_get_caps", J, False, True, H),
    HookPoint("before_get_stats", J, True, False, H),
    HookPoint("after_get_stats", J, False, True, H),
    HookPoint("before_get_vm_stats", J, True, False, VM),
    HookPoint("after_get_vm_stats", J, False, True, VM),
    HookPoint("before_get_all_vm_stats", J, True, False, H),
    HookPoint("after_get_all_vm_stats", J, False, True, H),
    HookPoint("after_hostdev_list_by_caps", J, False, True, H),
    # vmhooks extensions. The KubeVirt sidecar's PreCloudInitIso: the
    # cloud-init data object, edited before KubeVirt writes the ISO.
    HookPoint("before_cloudinit_iso", J, True, True, VM, extension=True),
)

POINTS: dict[str, HookPoint] = {point.name: point for point in _TABLE}


def get_point(name: str) -> HookPoint:
    """The point called `name`; UnknownPointError (with a hint) otherwise."""
    try:
        return POINTS[name]
    except KeyError:
        pass
    if not name or "/" in name or ".." in name or "\0" in name:
        raise UnknownPointError(f"invalid hook point name {name!r}")
    hint = ""
    if name.lower() in POINTS:
        hint = f" (did you mean {name.lower()!r}? point names are lower case)"
    else:
        # A prefix ('before_vm_migrate') names its points; else the closest spelling.
        nearest = [point for point in POINTS if point.startswith(name.lower())][:3]
        nearest = nearest or difflib.get_close_matches(name.lower(), POINTS, n=1, cutoff=0.6)
        if nearest:
            hint = f" (did you mean {' or '.join(map(repr, nearest))}? 'vmhooks hooks points' lists them all)"
        else:
            hint = " ('vmhooks hooks points' lists them all)"
    raise UnknownPointError(f"unknown hook point {name!r}{hint}")
