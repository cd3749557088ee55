"""What libvirt knows of a VM and of the host, in the shapes of VDSM's API
(vdsm-api.yml: RunningVmStats / ExitedVmStats, HostStats,
VdsmCapabilities), so hooks written for VDSM find the fields they read.

VDSM's types are kept: most numbers are strings ("2", "13.50"), rates and
percentages are per second over the interval since the previous sample of
the same VM, disk or host (0 at the first), keys of `disks` are target devs
and keys of `network` the vNICs' device names. A value libvirt cannot give
(the test driver has no CPU split, say) is left at VDSM's zero.
"""
from __future__ import annotations

import os
import platform
import socket
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from vmhooks import __version__

# Our VM status -> VDSM's VmStatus.
VDSM_STATUS = {
    "up": "Up",
    "paused": "Paused",
    "starting": "WaitForLaunch",
    "migrating": "Migration Source",
    "incoming": "Migration Destination",
    "hibernated": "Down",
    "down": "Down",
}


class Samples:
    """The previous sample of each counter set, for rates between two calls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, tuple[float, ...]]] = {}
        self._lock = threading.Lock()

    def deltas(self, key: str, values: tuple[float, ...]) -> tuple[float, tuple[float, ...]] | None:
        """(seconds, value deltas) since the previous sample of `key`; None at the first."""
        now = time.monotonic()
        with self._lock:
            previous = self._last.get(key)
            self._last[key] = (now, values)
        if previous is None or now <= previous[0]:
            return None
        return now - previous[0], tuple(new - old for new, old in zip(values, previous[1]))

    def retain(self, vm_ids: set[str]) -> None:
        """Forget the samples of VMs that are gone (host samples stay)."""
        with self._lock:
            for key in [key for key in self._last if key.split("/", 1)[0] not in vm_ids | {"host"}]:
                del self._last[key]


def _pct(value: float) -> str:
    return f"{max(0.0, value):.2f}"


def _try(call: Any, *args: Any, default: Any = None) -> Any:
    try:
        return call(*args)
    except (libvirt.libvirtError, OSError):
        return default


def exited_vm_stats(vm_id: str, status: str, why: str = "") -> dict[str, Any]:
    """ExitedVmStats: a VM that does not run here (now)."""
    return {"vmId": vm_id, "status": VDSM_STATUS.get(status, "Down"), "exitCode": 0, "exitMessage": why, "timeOffset": "0"}


def running_vm_stats(
    samples: Samples, vm_id: str, name: str, status: str, domain: libvirt.virDomain, started: float | None
) -> dict[str, Any]:
    """RunningVmStats of a live domain."""
    _state, _max_mem, memory, vcpus, cpu_time = domain.info()
    root = ET.fromstring(domain.XMLDesc(0))
    stats: dict[str, Any] = {
        "vmId": vm_id, "vmName": name, "status": VDSM_STATUS.get(status, "Up"),
        "elapsedTime": str(int(time.time() - started)) if started else "0",
        "vcpuCount": str(vcpus), "cpuUsage": str(cpu_time), "timeOffset": "0",
        "kvmEnable": "true" if root.get("type") == "kvm" else "false",
        "acpiEnable": "true" if root.find("features/acpi") is not None else "false",
        "monitorResponse": "0", "vmType": "kvm", "memoryStats": _memory_stats(domain, memory),
        "pid": "0",
    }  # fmt: skip
    stats.update(_cpu(samples, vm_id, domain, cpu_time, vcpus))
    stats["memUsage"] = _mem_usage(stats["memoryStats"])
    stats["disks"] = _disks(samples, vm_id, domain, root)
    stats["network"] = _network(samples, vm_id, domain, root)
    graphics = root.find("devices/graphics")
    if graphics is not None:
        stats.update(displayType="qxl" if graphics.get("type") == "spice" else "vnc",
                     displayPort=graphics.get("port", "-1"), displaySecurePort=graphics.get("tlsPort", "-1"),
                     displayIp=graphics.get("listen", "0"))  # fmt: skip
    return stats


def _cpu(samples: Samples, vm_id: str, domain: libvirt.virDomain, cpu_time: int, vcpus: int) -> dict[str, str]:
    """cpuUser / cpuSys: percent of one host CPU over the last interval, as VDSM."""
    split = _try(domain.getCPUStats, True, default=None)
    user = system = 0.0
    if split:
        user, system = float(split[0].get("user_time", 0)), float(split[0].get("system_time", 0))
    delta = samples.deltas(f"{vm_id}/cpu", (float(cpu_time), user, system))
    if delta is None:
        return {"cpuUser": "0.00", "cpuSys": "0.00"}
    seconds, (total, d_user, d_system) = delta
    if not split:  # no split: all of it counts as the guest's (user)
        d_user, d_system = total, 0.0
    scale = 100.0 / (seconds * 1e9)
    return {"cpuUser": _pct(d_user * scale), "cpuSys": _pct(d_system * scale)}


def _memory_stats(domain: libvirt.virDomain, memory_kib: int) -> dict[str, str]:
    found = _try(domain.memoryStats, default={}) or {}
    total = found.get("available", found.get("actual", memory_kib))
    unused = found.get("unused")
    stats = {"mem_total": str(total)}
    if unused is not None:
        stats.update(mem_unused=str(unused), mem_free=str(unused))
    for ours, theirs in (("swap_in", "swap_in"), ("swap_out", "swap_out"), ("majflt", "major_fault"), ("pageflt", "minor_fault")):
        if theirs in found:
            stats[ours] = str(found[theirs])
    return stats


def _mem_usage(memory_stats: dict[str, str]) -> str:
    """Percent of the guest's memory in use, from its balloon driver when it reports one."""
    total, unused = int(memory_stats.get("mem_total", 0)), memory_stats.get("mem_unused")
    if unused is None or not total:
        return "0"
    return str(int(round(100.0 * (total - int(unused)) / total)))


def _disks(samples: Samples, vm_id: str, domain: libvirt.virDomain, root: ET.Element) -> dict[str, dict[str, str]]:
    disks = {}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if not dev or disk.get("device", "disk") not in ("disk", "lun"):
            continue
        rd_req, rd_bytes, wr_req, wr_bytes, _errs = _try(domain.blockStats, dev, default=(0, 0, 0, 0, 0))
        timing = _try(domain.blockStatsFlags, dev, 0, default={}) or {}
        times = tuple(float(timing.get(k, 0)) for k in ("rd_total_times", "wr_total_times", "flush_total_times"))
        flushes = float(timing.get("flush_operations", 0))
        counters = (float(rd_bytes), float(wr_bytes), float(rd_req), float(wr_req), flushes, *times)
        delta = samples.deltas(f"{vm_id}/disk/{dev}", counters)
        read_rate = write_rate = read_latency = write_latency = flush_latency = 0.0
        if delta is not None:
            seconds, (d_rd, d_wr, d_rd_ops, d_wr_ops, d_flush, d_rd_t, d_wr_t, d_flush_t) = delta
            read_rate, write_rate = d_rd / seconds, d_wr / seconds
            read_latency = d_rd_t / d_rd_ops / 1e9 if d_rd_ops else 0.0
            write_latency = d_wr_t / d_wr_ops / 1e9 if d_wr_ops else 0.0
            flush_latency = d_flush_t / d_flush / 1e9 if d_flush else 0.0
        capacity, allocation, _physical = _try(domain.blockInfo, dev, default=(0, 0, 0))
        disks[dev] = {
            "readBytes": str(rd_bytes), "writtenBytes": str(wr_bytes),
            "readOps": str(rd_req), "writeOps": str(wr_req),
            "readRate": f"{read_rate:.1f}", "writeRate": f"{write_rate:.1f}",
            "readLatency": f"{read_latency:.6f}", "writeLatency": f"{write_latency:.6f}",
            "flushLatency": f"{flush_latency:.6f}",
            "apparentsize": str(capacity), "truesize": str(allocation),
        }  # fmt: skip
    return disks


def _network(samples: Samples, vm_id: str, domain: libvirt.virDomain, root: ET.Element) -> dict[str, dict[str, Any]]:
    network = {}
    for interface in root.findall("devices/interface"):
        target, mac, link = interface.find("target"), interface.find("mac"), interface.find("link")
        dev = target.get("dev") if target is not None else None
        if not dev:
            continue
        counters = _try(domain.interfaceStats, dev, default=(0,) * 8)
        rx, _rx_packets, rx_errs, rx_drop, tx, _tx_packets, tx_errs, tx_drop = counters
        network[dev] = {
            "name": dev, "macAddr": mac.get("address", "") if mac is not None else "",
            "rx": str(rx), "tx": str(tx), "rxErrors": str(rx_errs), "rxDropped": str(rx_drop),
            "txErrors": str(tx_errs), "txDropped": str(tx_drop),
            "state": link.get("state", "up") if link is not None else "up", "speed": "1000",
            "sampleTime": time.monotonic(),
        }  # fmt: skip
    return network


def host_stats(
    samples: Samples, conn: libvirt.virConnect, statuses: list[str], agent_started: float
) -> dict[str, Any]:
    """HostStats: CPU and memory as libvirt's node statistics give them."""
    stats: dict[str, Any] = {
        "vmCount": len(statuses),
        "vmActive": sum(status in ("up", "paused") for status in statuses),
        "vmMigrating": sum(status in ("migrating", "incoming") for status in statuses),
        "outgoingVmMigrations": sum(status == "migrating" for status in statuses),
        "incomingVmMigrations": sum(status == "incoming" for status in statuses),
        "elapsedTime": str(int(time.time() - agent_started)),
        "dateTime": time.strftime("%Y-%m-%dT%H:%M:%S GMT", time.gmtime()),
        "cpuUser": "0.00", "cpuSys": "0.00", "cpuIdle": "100.00", "network": {},
    }  # fmt: skip
    cpu = _try(conn.getCPUStats, libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, default=None)
    if cpu:
        keys = ("user", "kernel", "idle", "iowait")
        delta = samples.deltas("host/cpu", tuple(float(cpu.get(k, 0)) for k in keys))
        if delta is not None and sum(delta[1]) > 0:
            d_user, d_kernel, d_idle, d_iowait = delta[1]
            total = d_user + d_kernel + d_idle + d_iowait
            stats.update(cpuUser=_pct(100 * d_user / total), cpuSys=_pct(100 * d_kernel / total),
                         cpuIdle=_pct(100 * (d_idle + d_iowait) / total))  # fmt: skip
    memory = _try(conn.getMemoryStats, libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, default=None)
    if memory and memory.get("total"):  # KiB; buffers and page cache count as free, as on VDSM
        free_kib, total_kib = memory.get("free", 0) + memory.get("buffers", 0) + memory.get("cached", 0), memory["total"]
    else:  # drivers without node memory stats: free pages and the node's size
        free_kib = (_try(conn.getFreeMemory, default=0) or 0) // 1024
        total_kib = (_try(conn.getInfo, default=(None, 0))[1] or 0) * 1024
    if total_kib:
        stats.update(memFree=int(free_kib // 1024), memUsed=str(int(round(100 * (1 - free_kib / total_kib)))))
    return stats


def capabilities(conn: libvirt.virConnect, host_caps: ET.Element | None) -> dict[str, Any]:
    """VdsmCapabilities, as far as libvirt's host capabilities describe the host."""
    model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = conn.getInfo()
    caps: dict[str, Any] = {
        "cpuModel": model, "cpuCores": str(cores * sockets * nodes), "cpuThreads": str(cpus),
        "cpuSockets": str(sockets * nodes), "cpuSpeed": str(mhz), "memSize": str(memory_mib),
        "onlineCpus": ",".join(str(n) for n in range(cpus)), "kvmEnabled": "false", "cpuFlags": "",
        "emulatedMachines": [], "vmTypes": ["kvm"], "software_version": __version__,
        "software_revision": "0", "version_name": "vmhooks", "uuid": "", "guestOverhead": "65",
        "reservedMem": "321", "operatingSystem": _operating_system(), "hostname": socket.gethostname(),
        "supportsIPv6": socket.has_ipv6,
    }  # fmt: skip
    if host_caps is None:
        return caps
    caps["uuid"] = host_caps.findtext("host/uuid") or ""
    cpu_model = host_caps.findtext("host/cpu/model")
    features = [feature.get("name", "") for feature in host_caps.findall("host/cpu/feature")]
    caps["cpuFlags"] = ",".join([*features, *([f"model_{cpu_model}"] if cpu_model else [])])
    machines, kvm = set(), False
    for guest in host_caps.findall("guest"):
        machines.update(m.text for m in guest.findall("arch/machine") if m.text)
        kvm = kvm or guest.find("arch/domain[@type='kvm']") is not None
    caps["emulatedMachines"] = sorted(machines)
    caps["kvmEnabled"] = "true" if kvm else "false"
    return caps


def _operating_system() -> dict[str, str]:
    try:
        fields = platform.freedesktop_os_release()
    except OSError:
        fields = {}
    return {"name": fields.get("NAME", os.uname().sysname), "version": fields.get("VERSION_ID", ""),
            "release": os.uname().release, "pretty_name": fields.get("PRETTY_NAME", "")}  # fmt: skip
