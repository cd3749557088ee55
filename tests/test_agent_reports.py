"""agent/reports: VM stats, host stats and capabilities in VDSM's shapes
(vdsm-api.yml), as hooks at the JSON points and API callers get them."""
from __future__ import annotations

import time
import uuid

import pytest
from agentproc import domain_xml

# VDSM's types for the fields we fill (vdsm-api.yml): "s" a string, "i" an int.
RUNNING_VM_TYPES = {
    "vmId": "s", "vmName": "s", "status": "s", "elapsedTime": "s", "vcpuCount": "s", "cpuUser": "s",
    "cpuSys": "s", "cpuUsage": "s", "memUsage": "s", "timeOffset": "s", "kvmEnable": "s", "acpiEnable": "s",
    "monitorResponse": "s", "displayType": "s", "displayPort": "s",
}  # fmt: skip
DISK_FIELDS = {"readBytes", "writtenBytes", "readOps", "writeOps", "readRate", "writeRate", "readLatency",
               "writeLatency", "flushLatency", "apparentsize", "truesize"}  # fmt: skip
NIC_FIELDS = {"name", "macAddr", "rx", "tx", "rxErrors", "rxDropped", "txErrors", "txDropped", "state", "speed", "sampleTime"}
HOST_TYPES = {"cpuUser": "s", "cpuSys": "s", "cpuIdle": "s", "memUsed": "s", "memFree": "i", "vmCount": "i",
              "vmActive": "i", "vmMigrating": "i", "elapsedTime": "s", "dateTime": "s"}  # fmt: skip
CAPS_TYPES = {"cpuModel": "s", "cpuCores": "s", "cpuThreads": "s", "cpuSockets": "s", "cpuSpeed": "s",
              "memSize": "s", "kvmEnabled": "s", "cpuFlags": "s", "uuid": "s", "software_version": "s"}  # fmt: skip


def typed(report: dict, types: dict[str, str]) -> dict[str, str]:
    """The fields whose type is not VDSM's."""
    kinds = {"s": str, "i": int}
    return {name: type(report.get(name)).__name__ for name, kind in types.items() if type(report.get(name)) is not kinds[kind]}


def nic_xml(name: str, vm_id: str) -> str:
    return domain_xml(name, vm_id).replace("<model type='virtio'/>", "<model type='virtio'/><target dev='vnet7'/>")


def test_running_vm_stats_have_vdsms_fields_and_types(agent) -> None:
    vm_id = str(uuid.uuid4())
    agent.create(nic_xml("shaped", vm_id))
    first = agent.getStats(vm_id)["statsList"][0]
    assert typed(first, RUNNING_VM_TYPES) == {}
    assert first["status"] == "Up" and first["vmId"] == vm_id and first["vcpuCount"] == "2"
    assert set(first["disks"]) == {"vda"} and set(first["disks"]["vda"]) == DISK_FIELDS
    (nic,) = first["network"].values()
    assert set(nic) == NIC_FIELDS and nic["macAddr"] == "52:54:00:12:34:56"
    assert float(first["cpuUser"]) >= 0 and float(first["cpuSys"]) >= 0
    time.sleep(0.05)
    second = agent.getStats(vm_id)["statsList"][0]
    # The test driver's counters grow with time: a rate over the interval.
    assert float(second["disks"]["vda"]["readRate"]) > 0
    assert int(second["disks"]["vda"]["readBytes"]) > int(first["disks"]["vda"]["readBytes"])


def test_statuses_are_vdsms(agent) -> None:
    up, paused, saved = (str(uuid.uuid4()) for _ in range(3))
    for name, vm_id in (("a-up", up), ("b-paused", paused), ("c-saved", saved)):
        agent.create(domain_xml(name, vm_id))
    agent.pause(paused)
    agent.hibernate(saved)
    stats = {s["vmId"]: s for s in agent.getAllVmStats()}
    assert [stats[vm]["status"] for vm in (up, paused, saved)] == ["Up", "Paused", "Down"]
    assert stats[saved]["exitMessage"].startswith("hibernated to ") and stats[saved]["exitCode"] == 0
    vm = agent.context.registry.get(up)
    agent.context.registry.update(vm, status="migrating")
    assert agent.getStats(up)["statsList"][0]["status"] == "Migration Source"


def test_a_fakevmstats_style_hook_reads_and_edits_the_stats(agent, make_hook) -> None:
    """What upstream's fakevmstats reads: status, vmId, disks and network per device."""
    make_hook("after_get_all_vm_stats", "50_fake", """
        import hooking
        stats_list = hooking.read_json()
        for stats in stats_list:
            if stats['status'] != 'Up':
                continue
            stats['cpuUser'] = '%.2f' % 42.0
            stats['memUsage'] = str(7)
            for disk in stats['disks'].values():
                disk['readLatency'] = str(10 ** 6)
            for net in stats['network'].values():
                net['rxErrors'] = str(3)
            stats['guestFQDN'] = '%s.fakefqdn.com' % stats['vmId'].replace('-', '')
        hooking.write_json(stats_list)
    """, lang="python")
    vm_id = str(uuid.uuid4())
    agent.create(nic_xml("faked", vm_id))
    (stats,) = agent.getAllVmStats()
    assert (stats["cpuUser"], stats["memUsage"], stats["disks"]["vda"]["readLatency"]) == ("42.00", "7", "1000000")
    assert [nic["rxErrors"] for nic in stats["network"].values()] == ["3"]
    assert stats["guestFQDN"] == vm_id.replace("-", "") + ".fakefqdn.com"


def test_host_stats_and_capabilities_have_vdsms_types(agent) -> None:
    agent.create(domain_xml("counted", str(uuid.uuid4())))
    stats = agent.getHostStats()
    assert typed(stats, HOST_TYPES) == {}
    assert 0 <= int(stats["memUsed"]) <= 100
    assert (stats["vmCount"], stats["vmActive"], stats["vmMigrating"]) == (1, 1, 0)
    assert float(stats["cpuIdle"]) <= 100.0
    caps = agent.getCapabilities()
    assert typed(caps, CAPS_TYPES) == {}
    assert int(caps["cpuThreads"]) >= int(caps["cpuCores"]) >= 1 and int(caps["memSize"]) > 0
    assert caps["kvmEnabled"] in ("true", "false") and isinstance(caps["emulatedMachines"], list)
    assert caps["hooks"] == {} and caps["version_name"] == "vmhooks"


@pytest.mark.parametrize("command", [["host", "stats"], ["host", "caps"]])
def test_cli_shows_nested_fields_by_dotted_name(command, tmp_path, hooks_dir) -> None:
    import subprocess

    from agentproc import VMHOOKS, AgentProcess

    agent = AgentProcess(tmp_path / "agent", hooks_dir).start()
    try:
        done = subprocess.run([*VMHOOKS, *command, "--socket", str(agent.socket)], capture_output=True, text=True, timeout=60)
    finally:
        agent.stop()
    assert done.returncode == 0, done.stderr
    expected = "cpuIdle" if command[1] == "stats" else "operatingSystem.name"
    assert any(line.split()[0] == expected for line in done.stdout.splitlines() if line.strip())
