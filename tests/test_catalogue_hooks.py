"""Each catalogue hook, installed with `catalogue.install` and run through the
real runner (`run_chain`, real processes) on the seed's domain XML and on
edge cases: property absent, malformed values, elements already there."""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from vmhooks import catalogue
from vmhooks.forkserver import FastPathSettings
from vmhooks.points import get_point
from vmhooks.runner import ChainResult, RunnerConfig, ScriptRun, Status, run_chain

SEED_UUID = "3573e29e-5de9-468a-9fae-16050c6b3dcc"
CATALOGUE_PYTHON = "/usr/bin/python3"  # the catalogue hooks' shebang
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

pytestmark = pytest.mark.skipif(
    not os.access("/usr/bin/python3", os.X_OK), reason="catalogue hooks run under /usr/bin/python3"
)

INTERFACE = """<interface type='bridge'>
  <mac address='00:1a:4a:23:18:01'/>
  <source bridge='ovirtmgmt'/>
  <target dev='vnet0'/>
  <model type='virtio'/>
  <filterref filter='vdsm-no-mac-spoofing'/>
  <link state='up'/>
  <alias name='net0'/>
</interface>"""


class Hooks:
    """A hooks tree with some catalogue hooks installed, and a way to run a point."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.env: dict[str, str] = dict(os.environ)
        # nestedvt reads this host's sysfs unless told otherwise: point it at nothing.
        self.env["VMHOOKS_SYS_MODULE_DIR"] = str(work / "no-sys-module")

    def install(self, *names: str) -> Hooks:
        catalogue.install(names, self.root)
        return self

    def run(
        self,
        point: str,
        payload: str,
        custom: Mapping[str, str] | None = None,
        vm_id: str | None = SEED_UUID,
        compare: bool = True,
    ) -> ChainResult:
        """Run the chain twice: Python hooks forked by the fork server, then
        exec'd; both must give the same, byte for byte (issue 13), unless
        the hook picks at random or the first run used up what the second
        would act on (`compare=False`)."""
        results = []
        for fast in (True, False):
            settings = FastPathSettings(fast, interpreters=(CATALOGUE_PYTHON,))
            config = RunnerConfig(self.root, timeout=60, base_env=self.env, work_dir=self.work, fast_path=settings)
            results.append(run_chain(point, payload, config, custom=custom or {}, vm_id=vm_id))
        fast, exec_ = results
        assert [run.fast_path for run in fast.scripts] == [True] * len(fast.scripts)
        assert [run.fast_path for run in exec_.scripts] == [False] * len(exec_.scripts)
        if compare:
            assert seen(fast) == seen(exec_)
        return exec_


def seen(result: ChainResult) -> Any:
    """Everything the caller of a chain gets, but the durations."""
    runs = [(run.name, run.status, run.rc, run.stderr, run.changed, run.diff, run.note) for run in result.scripts]
    return runs, result.payload, result.output_text, result.rejected, result.edits_discarded, result.warnings


@pytest.fixture
def hooks(hooks_dir: Path, tmp_path: Path) -> Hooks:
    work = tmp_path / "work"
    work.mkdir()
    return Hooks(hooks_dir, work)


def only(result: ChainResult) -> ScriptRun:
    assert len(result.scripts) == 1, result.scripts
    return result.scripts[0]


def ok(result: ChainResult) -> ET.Element:
    """The run succeeded; the resulting XML, parsed."""
    run = only(result)
    assert run.status is Status.OK, (run.rc, run.stderr)
    assert result.rejected is None
    return ET.fromstring(result.payload)


def untouched(result: ChainResult, original: str) -> None:
    run = only(result)
    assert run.status is Status.OK, (run.rc, run.stderr)
    assert not run.changed, run.diff
    assert result.payload == original


def refused(result: ChainResult, rc: int, message: str) -> ScriptRun:
    """The script failed with `rc` and `message`, without touching the payload."""
    run = only(result)
    assert run.rc == rc, (run.rc, run.stderr)
    assert message in run.stderr, run.stderr
    assert not run.changed, run.diff
    assert result.aborts_operation == result.point.aborts
    return run


def into_devices(xml: str, snippet: str) -> str:
    return xml.replace("</devices>", snippet + "\n </devices>")


def disks_by_target(root: ET.Element) -> dict[Any, Any]:
    found = {}
    for disk in root.iter("disk"):
        target = disk.find("target")
        assert target is not None
        found[target.get("dev")] = disk
    return found


def boot_orders(root: ET.Element) -> dict[Any, Any]:
    """{alias or target dev or tag: boot order} of the devices that have one."""
    orders = {}
    for device in root.iterfind("devices/*"):
        boot = device.find("boot")
        if boot is not None:
            alias = device.find("alias")
            target = device.find("target")
            key = alias.get("name") if alias is not None else (
                target.get("dev") if target is not None else device.tag)
            orders[key] = boot.get("order")
    return orders


# --- every hook: no property, no change -----------------------------------

HOOK_POINTS = [
    (hook.name, script.point) for hook in catalogue.available() for script in hook.scripts
]


@pytest.mark.parametrize(("name", "point"), HOOK_POINTS)
def test_without_its_property_a_hook_leaves_the_payload_alone(hooks, seed_xml, name, point):
    hooks.install(name)
    payload = INTERFACE if get_point(point).payload.value == "device" else seed_xml
    untouched(hooks.run(point, payload), payload)


def test_the_whole_catalogue_leaves_a_vm_without_properties_alone(hooks, seed_xml):
    hooks.install(*catalogue.catalogue_names())
    result = hooks.run("before_vm_start", seed_xml)
    assert len(result.scripts) == 19
    assert all(run.status is Status.OK for run in result.scripts), result.error_message()
    assert not result.changed and result.payload == seed_xml


# --- pincpu -----------------------------------------------------------------


def test_pincpu_sets_the_cpuset(hooks, seed_xml):
    root = ok(hooks.install("pincpu").run("before_vm_start", seed_xml, {"pincpu": "1-4,^3,6"}))
    assert root.find("vcpu").get("cpuset") == "1-4,^3,6"
    assert root.find("vcpu").text == "1"


def test_pincpu_leaves_an_existing_cpuset_alone(hooks, seed_xml):
    xml = seed_xml.replace("<vcpu placement='static'>", "<vcpu placement='static' cpuset='0'>")
    result = hooks.install("pincpu").run("before_vm_start", xml, {"pincpu": "2"})
    untouched(result, xml)
    assert "already has cpuset" in result.scripts[0].stderr


@pytest.mark.parametrize("value", ["abc", "1-", "4-1", "1,,2", "^1-3", ""])
def test_pincpu_refuses_a_malformed_cpuset(hooks, seed_xml, value):
    result = hooks.install("pincpu").run("before_vm_start", seed_xml, {"pincpu": value})
    refused(result, 1, "pincpu: invalid value")
    assert result.aborts_operation


# --- cantmigrate ------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "true", "anything"])
def test_cantmigrate_refuses_migration_and_stops_the_chain(hooks, make_hook, seed_xml, value):
    hooks.install("cantmigrate")
    make_hook("before_vm_migrate_source", "90_after", "touch \"$0.ran\"\n")
    result = hooks.run("before_vm_migrate_source", seed_xml, {"cantmigrate": value})
    assert [run.name for run in result.scripts] == ["50_cantmigrate"]
    run = result.scripts[0]
    assert run.status is Status.STOPPED_CHAIN and run.rc == 2
    assert "cantmigrate: before_vm_migrate_source: cannot migrate this VM" in run.stderr
    assert result.aborts_operation
    assert not (hooks.root / "before_vm_migrate_source" / "90_after.ran").exists()


# --- hugepages --------------------------------------------------------------


def test_hugepages_adds_memory_backing_after_the_memory(hooks, seed_xml):
    root = ok(hooks.install("hugepages").run("before_vm_start", seed_xml, {"hugepages": "512"}))
    backing = root.find("memoryBacking")
    assert backing is not None and backing.find("hugepages") is not None
    tags = [child.tag for child in root]
    assert tags.index("memoryBacking") == tags.index("currentMemory") + 1


def test_hugepages_adds_to_an_existing_memory_backing(hooks, seed_xml):
    xml = seed_xml.replace("<vcpu ", "<memoryBacking><nosharepages/></memoryBacking>\n <vcpu ")
    root = ok(hooks.install("hugepages").run("before_vm_start", xml, {"hugepages": "1024"}))
    assert len(root.findall("memoryBacking")) == 1
    assert [c.tag for c in root.find("memoryBacking")] == ["nosharepages", "hugepages"]


@pytest.mark.parametrize("value", ["0"])
def test_hugepages_zero_is_off(hooks, seed_xml, value):
    untouched(hooks.install("hugepages").run("before_vm_start", seed_xml, {"hugepages": value}), seed_xml)


def test_hugepages_already_there(hooks, seed_xml):
    xml = seed_xml.replace("<vcpu ", "<memoryBacking><hugepages/></memoryBacking>\n <vcpu ")
    untouched(hooks.install("hugepages").run("before_vm_start", xml, {"hugepages": "512"}), xml)


@pytest.mark.parametrize("value", ["lots", "-1", "512M", ""])
def test_hugepages_refuses_a_malformed_size(hooks, seed_xml, value):
    refused(hooks.install("hugepages").run("before_vm_start", seed_xml, {"hugepages": value}), 1,
            "hugepages: invalid value")


# --- numa -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["interleave", "strict", "preferred"])
def test_numa_sets_the_memory_policy(hooks, seed_xml, mode):
    root = ok(hooks.install("numa").run("before_vm_start", seed_xml, {"numa": f"{mode}:1-4,^3"}))
    memory = root.find("numatune/memory")
    assert memory.attrib == {"mode": mode, "nodeset": "1-4,^3"}


def test_numa_leaves_an_existing_policy_alone(hooks, seed_xml):
    xml = seed_xml.replace("<cputune>", "<numatune><memory mode='strict' nodeset='0'/></numatune>\n <cputune>")
    untouched(hooks.install("numa").run("before_vm_start", xml, {"numa": "interleave:1"}), xml)


@pytest.mark.parametrize("value", ["loose:1", "strict", "strict:", "strict:a-b", "1-4"])
def test_numa_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("numa").run("before_vm_start", seed_xml, {"numa": value}), 1, "numa: invalid value")


# --- qemucmdline ------------------------------------------------------------


def test_qemucmdline_adds_arguments_in_the_qemu_namespace(hooks, seed_xml):
    result = hooks.install("qemucmdline").run(
        "before_vm_start", seed_xml, {"qemu_cmdline": '["-cpu","host,+invtsc","-s"]'}
    )
    root = ok(result)
    args = root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    assert [arg.get("value") for arg in args] == ["-cpu", "host,+invtsc", "-s"]
    assert 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"' in result.payload


def test_qemucmdline_appends_to_an_existing_commandline(hooks, seed_xml):
    xml = seed_xml.replace(
        "<domain type='kvm' id='1'>",
        f"<domain type='kvm' id='1' xmlns:q='{QEMU_NS}'>",
    ).replace("</domain>", "<q:commandline><q:arg value='-a'/></q:commandline>\n</domain>")
    root = ok(hooks.install("qemucmdline").run("before_vm_start", xml, {"qemu_cmdline": '["-b"]'}))
    lines = root.findall(f"{{{QEMU_NS}}}commandline")
    assert len(lines) == 1
    assert [arg.get("value") for arg in lines[0]] == ["-a", "-b"]


@pytest.mark.parametrize("value", ["-opt val", '{"a": 1}', '["-a", 2]', "[-a]"])
def test_qemucmdline_refuses_what_is_not_a_json_list_of_strings(hooks, seed_xml, value):
    refused(hooks.install("qemucmdline").run("before_vm_start", seed_xml, {"qemu_cmdline": value}), 1,
            "qemucmdline: invalid qemu_cmdline")


# --- smbios -----------------------------------------------------------------


def test_smbios_replaces_and_adds_entries(hooks, seed_xml):
    value = "{'serial': '1234'}^{'vendor': 'oVirt'}^{'family': 'a^b', 'sku': 7}"
    root = ok(hooks.install("smbios").run("before_vm_start", seed_xml, {"smbios": value}))
    system = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert system["serial"] == "1234"
    assert system["family"] == "a^b" and system["sku"] == "7"
    assert system["manufacturer"] == "Red Hat"  # kept
    assert len(root.findall("sysinfo/system/entry[@name='serial']")) == 1
    # vendor is a BIOS field, where the VDSM hook puts it (and libvirt wants it)
    assert {e.get("name"): e.text for e in root.findall("sysinfo/bios/entry")} == {"vendor": "oVirt"}


def test_smbios_creates_sysinfo_and_the_os_smbios_mode(hooks, seed_xml):
    start, end = seed_xml.index(" <sysinfo"), seed_xml.index("</sysinfo>") + len("</sysinfo>\n")
    xml = (seed_xml[:start] + seed_xml[end:]).replace("<smbios mode='sysinfo'/>", "")
    root = ok(hooks.install("smbios").run("before_vm_start", xml, {"smbios": "{'serial': 'X1'}"}))
    assert root.find("sysinfo").get("type") == "smbios"
    assert root.find("sysinfo/system/entry[@name='serial']").text == "X1"
    assert root.find("os/smbios").get("mode") == "sysinfo"


@pytest.mark.parametrize("value", ["serial=1234", "{'serial': }", "['serial']", "{'bad name': 'x'}",
                                   "{'serial': {'a': 1}}", "{}"])
def test_smbios_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("smbios").run("before_vm_start", seed_xml, {"smbios": value}), 1,
            "smbios: invalid value")


# --- cpuflags ---------------------------------------------------------------


def features(root: ET.Element) -> dict[Any, Any]:
    return {f.get("name"): f.get("policy") for f in root.findall("cpu/feature")}


def test_cpuflags_requires_and_disables(hooks, seed_xml):
    root = ok(hooks.install("cpuflags").run("before_vm_start", seed_xml, {"cpuflags": "+mmx,-syscall,SAP"}))
    assert features(root) == {"mmx": "require", "syscall": "disable", "invtsc": "require", "rdtscp": "require"}
    assert root.find("cpu/model").text == "Conroe"


@pytest.mark.parametrize("value", ["true", "True"])
def test_cpuflags_sap_agent_means_sap(hooks, seed_xml, value):
    root = ok(hooks.install("cpuflags").run("before_vm_start", seed_xml, {"sap_agent": value}))
    assert features(root) == {"invtsc": "require", "rdtscp": "require"}


def test_cpuflags_wins_over_sap_agent(hooks, seed_xml):
    custom = {"cpuflags": "+mmx", "sap_agent": "true"}
    root = ok(hooks.install("cpuflags").run("before_vm_start", seed_xml, custom))
    assert features(root) == {"mmx": "require"}


def test_cpuflags_sap_agent_false_does_nothing(hooks, seed_xml):
    untouched(hooks.install("cpuflags").run("before_vm_start", seed_xml, {"sap_agent": "false"}), seed_xml)


def test_cpuflags_changes_the_policy_of_an_existing_feature(hooks, seed_xml):
    xml = seed_xml.replace("</cpu>", "<feature policy='require' name='mmx'/></cpu>")
    root = ok(hooks.install("cpuflags").run("before_vm_start", xml, {"cpuflags": "-mmx,+mmx2,+mmx2"}))
    assert features(root) == {"mmx": "disable", "mmx2": "require"}
    assert len(root.findall("cpu/feature")) == 2


def test_cpuflags_adds_a_cpu_element_when_missing(hooks, seed_xml):
    start, end = seed_xml.index(" <cpu "), seed_xml.index("</cpu>") + len("</cpu>\n")
    root = ok(hooks.install("cpuflags").run("before_vm_start", seed_xml[:start] + seed_xml[end:],
                                            {"cpuflags": "+vmx"}))
    assert features(root) == {"vmx": "require"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mmx", "flag 'mmx' needs a + (require) or - (disable) prefix"),
        ("+mmx,sap", "flag 'sap' needs a +"),
        ("+mmx,-mmx", "flag 'mmx' is both required and disabled"),
        ("SAP,-invtsc", "flag 'invtsc' is both required and disabled"),
    ],
)
def test_cpuflags_refuses_bad_flags(hooks, seed_xml, value, message):
    refused(hooks.install("cpuflags").run("before_vm_start", seed_xml, {"cpuflags": value}), 1, message)


# --- diskunmap --------------------------------------------------------------

SCSI_DISK = """<disk type='file' device='disk'>
   <driver name='qemu' type='raw'/>
   <source file='/images/scsi.img'/>
   <target dev='sda' bus='scsi'/>
 </disk>
 <disk type='block' device='lun'>
   <source dev='/dev/mapper/lun1'/>
   <target dev='sdb' bus='scsi'/>
 </disk>
 <disk type='file' device='disk'>
   <driver name='qemu' type='raw' discard='ignore'/>
   <source file='/images/ide.img'/>
   <target dev='hdb' bus='ide'/>
 </disk>"""


def test_diskunmap_on_sets_discard_on_scsi_and_ide_disks_and_luns(hooks, seed_xml):
    xml = into_devices(seed_xml, SCSI_DISK)
    disks = disks_by_target(ok(hooks.install("diskunmap").run("before_vm_start", xml, {"diskunmap": "on"})))
    assert disks["sda"].find("driver").get("discard") == "unmap"
    assert disks["sdb"].find("driver").attrib == {"name": "qemu", "discard": "unmap"}  # added
    assert disks["hdb"].find("driver").get("discard") == "unmap"
    assert disks["vda"].find("driver").get("discard") is None  # virtio
    assert disks["hdc"].find("driver").get("discard") is None  # a CD-ROM


def test_diskunmap_on_the_seed_has_nothing_to_change(hooks, seed_xml):
    untouched(hooks.install("diskunmap").run("before_vm_start", seed_xml, {"diskunmap": "on"}), seed_xml)


def test_diskunmap_off_does_nothing(hooks, seed_xml):
    xml = into_devices(seed_xml, SCSI_DISK)
    untouched(hooks.install("diskunmap").run("before_vm_start", xml, {"diskunmap": "off"}), xml)


@pytest.mark.parametrize("value", ["yes", "ON", ""])
def test_diskunmap_refuses_other_values(hooks, seed_xml, value):
    refused(hooks.install("diskunmap").run("before_vm_start", seed_xml, {"diskunmap": value}), 1,
            "diskunmap: invalid value")


# --- extnet and allocate_net (device points) --------------------------------


@pytest.mark.parametrize("point", ["before_device_create", "before_nic_hotplug"])
def test_extnet_puts_the_interface_on_a_libvirt_network(hooks, point):
    root = ok(hooks.install("extnet").run(point, INTERFACE, {"extnet": "ovs-net"}))
    assert root.get("type") == "network"
    assert root.find("source").attrib == {"network": "ovs-net"}
    assert root.find("mac").get("address") == "00:1a:4a:23:18:01"
    assert root.find("filterref") is not None


@pytest.mark.parametrize("value", ["a/b", "two words", ""])
def test_extnet_refuses_a_bad_network_name(hooks, value):
    refused(hooks.install("extnet").run("before_device_create", INTERFACE, {"extnet": value}), 1,
            "extnet: invalid network name")


def test_allocate_net_picks_one_of_the_networks(hooks):
    hooks.install("allocate_net")
    picked = set()
    for _ in range(12):
        # A random pick each time: the two runs of one call may differ.
        root = ok(hooks.run("before_device_create", INTERFACE, {"equivnets": " red  green blue "}, compare=False))
        assert root.get("type") == "bridge"
        picked.add(root.find("source").get("bridge"))
    assert picked <= {"red", "green", "blue"} and len(picked) >= 2


def test_allocate_net_on_a_network_interface(hooks):
    xml = INTERFACE.replace("type='bridge'", "type='network'").replace("bridge='ovirtmgmt'", "network='x'")
    root = ok(hooks.install("allocate_net").run("before_device_create", xml, {"equivnets": "only"}))
    assert root.get("type") == "network" and root.find("source").attrib == {"network": "only"}


@pytest.mark.parametrize("value", ["", "  ", "a/b c"])
def test_allocate_net_refuses_an_empty_or_bad_list(hooks, value):
    refused(hooks.install("allocate_net").run("before_device_create", INTERFACE, {"equivnets": value}), 1,
            "allocate_net: invalid equivnets")


# --- boot_hostdev -----------------------------------------------------------

HOSTDEVS = """<hostdev mode='subsystem' type='pci' managed='no'>
   <source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></source>
   <alias name='hostdev0'/>
 </hostdev>
 <hostdev mode='subsystem' type='scsi' managed='no' rawio='yes'>
   <source><adapter name='scsi_host2'/><address bus='0' target='1' unit='0'/></source>
   <alias name='hostdev1'/>
 </hostdev>
 <hostdev mode='subsystem' type='usb' managed='no'>
   <source><address bus='2' device='8'/></source>
   <alias name='hostdev2'/>
 </hostdev>
 <hostdev mode='subsystem' type='usb' managed='no'>
   <source><address bus='7' device='1'/></source>
   <alias name='hostdev3'/>
 </hostdev>"""


@pytest.mark.parametrize(
    ("name", "alias"),
    [("pci_0000_00_1f_2", "hostdev0"), ("scsi_2_0_1_0", "hostdev1"), ("usb_2_8", "hostdev2"),
     ("usb_usb7", "hostdev3")],
)
def test_boot_hostdev_boots_that_device_first(hooks, seed_xml, name, alias):
    xml = into_devices(seed_xml, HOSTDEVS)
    root = ok(hooks.install("boot_hostdev").run("before_vm_start", xml, {"boot_hostdev": name}))
    # the seed's <os><boot dev='hd'/> became a device boot order, then moved up
    assert root.find("os/boot") is None
    assert boot_orders(root) == {alias: "1", "virtio-disk0": "2"}


def test_boot_hostdev_moves_the_other_boot_orders_up(hooks, seed_xml):
    xml = into_devices(seed_xml.replace("<boot dev='hd'/>", ""), HOSTDEVS)
    xml = xml.replace("<alias name='virtio-disk0'/>", "<boot order='1'/><alias name='virtio-disk0'/>")
    xml = xml.replace("<alias name='net0'/>", "<boot order='2'/><alias name='net0'/>")
    root = ok(hooks.install("boot_hostdev").run("before_vm_start", xml, {"boot_hostdev": "pci_0000_00_1f_2"}))
    assert boot_orders(root) == {"hostdev0": "1", "virtio-disk0": "2", "net0": "3"}
    assert len(root.findall("devices/hostdev/boot")) == 1


def test_boot_hostdev_without_that_device_fails_and_changes_nothing(hooks, seed_xml):
    result = hooks.install("boot_hostdev").run("before_vm_start", seed_xml, {"boot_hostdev": "pci_0000_00_1f_2"})
    refused(result, 1, "boot_hostdev: the VM has no PCI host device pci_0000_00_1f_2")
    assert result.payload == seed_xml


@pytest.mark.parametrize("value", ["pci_00_1f", "eth0", "scsi_1_2", ""])
def test_boot_hostdev_refuses_a_malformed_name(hooks, seed_xml, value):
    refused(hooks.install("boot_hostdev").run("before_vm_start", seed_xml, {"boot_hostdev": value}), 1,
            "boot_hostdev: invalid device name")


# --- httpsisoboot -----------------------------------------------------------


def test_httpsisoboot_adds_a_cdrom_that_boots_first(hooks, seed_xml):
    url = "https://images.example.com/isos/install.iso"
    root = ok(hooks.install("httpsisoboot").run("before_vm_start", seed_xml, {"httpsisoboot": url}))
    cdrom = disks_by_target(root)["hda"]
    assert cdrom.attrib == {"type": "network", "device": "cdrom"}
    assert cdrom.find("source").attrib == {"protocol": "https", "name": "/isos/install.iso"}
    assert cdrom.find("source/host").attrib == {"name": "images.example.com", "port": "443"}
    assert cdrom.find("target").attrib == {"dev": "hda", "bus": "ide", "tray": "closed"}
    assert cdrom.find("readonly") is not None
    assert root.find("os/boot") is None
    assert boot_orders(root) == {"hda": "1", "virtio-disk0": "2"}


def test_httpsisoboot_port_query_and_q35(hooks, seed_xml):
    xml = seed_xml.replace("machine='rhel6.2.0'", "machine='pc-q35-7.2'")
    url = "https://[2001:db8::1]:8443/a.iso?token=x"
    root = ok(hooks.install("httpsisoboot").run("before_vm_start", xml, {"httpsisoboot": url}))
    cdrom = [d for d in root.iter("disk") if d.get("type") == "network"][0]
    assert cdrom.find("source").get("name") == "/a.iso?token=x"
    assert cdrom.find("source/host").attrib == {"name": "2001:db8::1", "port": "8443"}
    assert cdrom.find("target").get("bus") == "sata" and cdrom.find("target").get("dev") == "sda"


@pytest.mark.parametrize(
    "url", ["http://images.example.com/a.iso", "ftp://h/a.iso", "https:///a.iso", "https://h/", "/a.iso"]
)
def test_httpsisoboot_refuses_anything_but_https_with_exit_2(hooks, seed_xml, url):
    result = hooks.install("httpsisoboot").run("before_vm_start", seed_xml, {"httpsisoboot": url})
    run = refused(result, 2, "httpsisoboot: refusing")
    assert run.status is Status.STOPPED_CHAIN
    assert result.payload == seed_xml


def test_httpsisoboot_with_all_ide_slots_taken(hooks, seed_xml):
    extra = "".join(
        f"<disk type='file' device='cdrom'><target dev='{d}' bus='ide'/></disk>" for d in ("hda", "hdb", "hdd")
    )
    result = hooks.install("httpsisoboot").run("before_vm_start", into_devices(seed_xml, extra),
                                               {"httpsisoboot": "https://h/a.iso"})
    refused(result, 1, "no free IDE slot")


# --- spiceoptions -----------------------------------------------------------


def test_spiceoptions_adds_graphics_children(hooks, seed_xml):
    value = "{'image': {'compression': 'glz'}, 'streaming': {'mode': 'filter'}, 'jpeg': {'compression': 'auto'}}"
    root = ok(hooks.install("spiceoptions").run("before_vm_start", seed_xml, {"spiceoptions": value}))
    graphics = root.find("devices/graphics")
    assert graphics.find("image").attrib == {"compression": "glz"}
    assert graphics.find("streaming").attrib == {"mode": "filter"}
    assert graphics.find("jpeg").attrib == {"compression": "auto"}
    assert len(graphics.findall("channel")) == 2  # kept


def test_spiceoptions_updates_an_existing_element(hooks, seed_xml):
    xml = seed_xml.replace("<channel name='main'", "<image compression='off'/><channel name='main'")
    root = ok(hooks.install("spiceoptions").run("before_vm_start", xml,
                                                {"spiceoptions": "{'image': {'compression': 'lz'}}"}))
    images = root.findall("devices/graphics/image")
    assert len(images) == 1 and images[0].get("compression") == "lz"


def test_spiceoptions_without_spice_does_nothing(hooks, seed_xml):
    xml = seed_xml.replace("<graphics type='spice'", "<graphics type='vnc'")
    result = hooks.install("spiceoptions").run("before_vm_start", xml,
                                               {"spiceoptions": "{'image': {'compression': 'glz'}}"})
    untouched(result, xml)


@pytest.mark.parametrize("value", ["image=glz", "{'image': 'glz'}", "{'image': {}}", "['image']",
                                   "{'image': {'compression': None}}"])
def test_spiceoptions_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("spiceoptions").run("before_vm_start", seed_xml, {"spiceoptions": value}), 1,
            "spiceoptions: invalid value")


# --- macspoof ---------------------------------------------------------------


def with_filters(seed_xml: str) -> str:
    xml = seed_xml.replace("<alias name='net0'/>", "<filterref filter='vdsm-no-mac-spoofing'/><alias name='net0'/>")
    return xml.replace("<alias name='net1'/>", "<filterref filter='clean-traffic'/><alias name='net1'/>")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_macspoof_removes_the_no_mac_spoofing_filters(hooks, seed_xml, value):
    root = ok(hooks.install("macspoof").run("before_vm_start", with_filters(seed_xml), {"macspoof": value}))
    filters = [f.get("filter") for f in root.iter("filterref")]
    assert filters == ["clean-traffic"]


def test_macspoof_false_does_nothing(hooks, seed_xml):
    xml = with_filters(seed_xml)
    untouched(hooks.install("macspoof").run("before_vm_start", xml, {"macspoof": "false"}), xml)


@pytest.mark.parametrize("point", ["before_device_create", "before_nic_hotplug"])
def test_macspoof_on_one_vnic(hooks, point):
    root = ok(hooks.install("macspoof").run(point, INTERFACE, {"ifacemacspoof": "true"}))
    assert root.find("filterref") is None and root.find("mac") is not None


def test_macspoof_vm_property_does_not_act_at_device_points(hooks):
    untouched(hooks.install("macspoof").run("before_device_create", INTERFACE, {"macspoof": "true"}), INTERFACE)


# --- floppy -----------------------------------------------------------------


def test_floppy_attaches_an_image(hooks, seed_xml):
    root = ok(hooks.install("floppy").run("before_vm_start", seed_xml, {"floppy": "/images/drivers.vfd"}))
    floppy = disks_by_target(root)["fda"]
    assert floppy.attrib == {"type": "file", "device": "floppy"}
    assert floppy.find("source").get("file") == "/images/drivers.vfd"
    assert floppy.find("target").get("bus") == "fdc"


def test_floppy_takes_the_second_drive_when_the_first_is_taken(hooks, seed_xml):
    xml = into_devices(seed_xml, "<disk type='file' device='floppy'><source file='/a.vfd'/><target dev='fda'/></disk>")
    root = ok(hooks.install("floppy").run("before_vm_start", xml, {"floppy": "/b.vfd"}))
    assert disks_by_target(root)["fdb"].find("source").get("file") == "/b.vfd"


def test_floppy_already_attached(hooks, seed_xml):
    xml = into_devices(seed_xml, "<disk type='file' device='floppy'><source file='/a.vfd'/><target dev='fda'/></disk>")
    untouched(hooks.install("floppy").run("before_vm_start", xml, {"floppy": "/a.vfd"}), xml)


def test_floppy_refuses_a_relative_path(hooks, seed_xml):
    refused(hooks.install("floppy").run("before_vm_start", seed_xml, {"floppy": "drivers.vfd"}), 1,
            "floppy: invalid value")


def test_floppy_refuses_migration(hooks, seed_xml):
    result = hooks.install("floppy").run("before_vm_migrate_source", seed_xml, {"floppy": "/a.vfd"})
    run = refused(result, 2, "floppy: cannot migrate a VM with a floppy image")
    assert run.status is Status.STOPPED_CHAIN and result.aborts_operation


# --- vmdisk -----------------------------------------------------------------


def test_vmdisk_attaches_images(hooks, seed_xml):
    value = "/images/a.img:qcow2,/images/b.img:raw"
    disks = disks_by_target(ok(hooks.install("vmdisk").run("before_vm_start", seed_xml, {"vmdisk": value})))
    assert disks["vdb"].find("source").get("file") == "/images/a.img"
    assert disks["vdb"].find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert disks["vdc"].find("driver").get("type") == "raw"
    assert disks["vdc"].find("target").get("bus") == "virtio"


def test_vmdisk_skips_an_attached_image_and_a_taken_name(hooks, seed_xml):
    xml = into_devices(seed_xml, "<disk type='file' device='disk'><source file='/images/a.img'/>"
                                 "<target dev='vdb' bus='virtio'/></disk>")
    disks = disks_by_target(ok(hooks.install("vmdisk").run(
        "before_vm_start", xml, {"vmdisk": "/images/a.img:qcow2,/images/c.img:raw"})))
    assert sorted(disks) == ["hdc", "vda", "vdb", "vdc"]
    assert disks["vdc"].find("source").get("file") == "/images/c.img"


@pytest.mark.parametrize("value", ["/a.img:vmdk", "a.img:raw", "/a.img", "/a.img:raw,"])
def test_vmdisk_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("vmdisk").run("before_vm_start", seed_xml, {"vmdisk": value}), 1,
            "vmdisk: invalid value")


# --- hostusb ----------------------------------------------------------------


def test_hostusb_passes_devices_through(hooks, seed_xml):
    root = ok(hooks.install("hostusb").run("before_vm_start", seed_xml, {"hostusb": "0x1234:0xbeef&0x2222:0xABaa"}))
    found = [(h.find("source/vendor").get("id"), h.find("source/product").get("id"))
             for h in root.findall("devices/hostdev")]
    assert found == [("0x1234", "0xbeef"), ("0x2222", "0xABaa")]
    assert all(h.attrib == {"mode": "subsystem", "type": "usb"} for h in root.findall("devices/hostdev"))


def test_hostusb_skips_a_device_already_there(hooks, seed_xml):
    xml = into_devices(seed_xml, "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
                                 "<product id='0xBEEF'/></source></hostdev>")
    untouched(hooks.install("hostusb").run("before_vm_start", xml, {"hostusb": "0x1234:0xbeef"}), xml)


@pytest.mark.parametrize("value", ["1234:beef", "0x1234:0xbeef,0x1:0x2", "0x1234", "0x12345:0xbeef"])
def test_hostusb_refuses_a_malformed_id(hooks, seed_xml, value):
    refused(hooks.install("hostusb").run("before_vm_start", seed_xml, {"hostusb": value}), 1,
            "hostusb: invalid value")


# --- smartcard --------------------------------------------------------------


def test_smartcard_adds_a_passthrough_card(hooks, seed_xml):
    root = ok(hooks.install("smartcard").run("before_vm_start", seed_xml, {"smartcard": "true"}))
    assert root.find("devices/smartcard").attrib == {"mode": "passthrough", "type": "spicevmc"}


@pytest.mark.parametrize("value", ["false", "no"])
def test_smartcard_false_does_nothing(hooks, seed_xml, value):
    untouched(hooks.install("smartcard").run("before_vm_start", seed_xml, {"smartcard": value}), seed_xml)


def test_smartcard_already_there(hooks, seed_xml):
    xml = into_devices(seed_xml, "<smartcard mode='host'/>")
    untouched(hooks.install("smartcard").run("before_vm_start", xml, {"smartcard": "true"}), xml)


# --- directlun --------------------------------------------------------------


def test_directlun_attaches_luns(hooks, seed_xml):
    value = "3600a0b80005b10ca000011b44c8f1a0f:readonly,mpatha"
    disks = disks_by_target(ok(hooks.install("directlun").run("before_vm_start", seed_xml, {"directlun": value})))
    first, second = disks["vdb"], disks["vdc"]
    assert first.attrib == {"type": "block", "device": "disk"}
    assert first.find("source").get("dev") == "/dev/mapper/3600a0b80005b10ca000011b44c8f1a0f"
    assert first.find("readonly") is not None
    assert first.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}
    assert second.find("source").get("dev") == "/dev/mapper/mpatha" and second.find("readonly") is None


def test_directlun_skips_an_attached_lun(hooks, seed_xml):
    xml = into_devices(seed_xml, "<disk type='block' device='disk'><source dev='/dev/mapper/x'/>"
                                 "<target dev='vdb' bus='virtio'/></disk>")
    untouched(hooks.install("directlun").run("before_vm_start", xml, {"directlun": "x"}), xml)


@pytest.mark.parametrize("value", ["../../etc/passwd", "x:rw", "a b", "x,", ".."])
def test_directlun_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("directlun").run("before_vm_start", seed_xml, {"directlun": value}), 1,
            "directlun: invalid value")


# --- nestedvt ---------------------------------------------------------------


def fake_sys_module(hooks: Hooks, module: str, value: str) -> None:
    root = hooks.work / "sys-module"
    parameters = root / module / "parameters"
    parameters.mkdir(parents=True)
    (parameters / "nested").write_text(value + "\n")
    hooks.env["VMHOOKS_SYS_MODULE_DIR"] = str(root)


@pytest.mark.parametrize(("module", "value", "feature"),
                         [("kvm_intel", "Y", "vmx"), ("kvm_intel", "1", "vmx"), ("kvm_amd", "1", "svm")])
def test_nestedvt_requires_the_virtualization_flag(hooks, seed_xml, module, value, feature):
    fake_sys_module(hooks, module, value)
    root = ok(hooks.install("nestedvt").run("before_vm_start", seed_xml))
    assert features(root) == {feature: "require"}


@pytest.mark.parametrize("value", ["N", "0"])
def test_nestedvt_with_nesting_off_does_nothing(hooks, seed_xml, value):
    fake_sys_module(hooks, "kvm_intel", value)
    result = hooks.install("nestedvt").run("before_vm_start", seed_xml)
    untouched(result, seed_xml)
    assert "nesting is off" in result.scripts[0].stderr


def test_nestedvt_without_kvm_does_nothing(hooks, seed_xml):
    result = hooks.install("nestedvt").run("before_vm_start", seed_xml)
    untouched(result, seed_xml)
    assert "no kvm_intel or kvm_amd module" in result.scripts[0].stderr


def test_nestedvt_leaves_an_existing_flag_alone(hooks, seed_xml):
    fake_sys_module(hooks, "kvm_intel", "Y")
    xml = seed_xml.replace("</cpu>", "<feature policy='disable' name='vmx'/></cpu>")
    untouched(hooks.install("nestedvt").run("before_vm_start", xml), xml)


def test_a_vm_property_cannot_override_the_agents_settings_for_hooks(hooks, seed_xml):
    from vmhooks.errors import InvalidEnvironmentError

    hooks.install("nestedvt")
    with pytest.raises(InvalidEnvironmentError, match="'VMHOOKS_SYS_MODULE_DIR' is reserved"):
        hooks.run("before_vm_start", seed_xml, {"VMHOOKS_SYS_MODULE_DIR": "/tmp"})


# --- log_console ------------------------------------------------------------

SERIAL = "<serial type='pty'><target port='0'/></serial>"


def test_log_console_logs_the_serial_console(hooks, seed_xml):
    root = ok(hooks.install("log_console").run("before_vm_start", into_devices(seed_xml, SERIAL),
                                               {"log_console": "on"}))
    log = root.find("devices/serial/log")
    assert log.attrib == {"file": "/var/log/libvirt/qemu/myvm-console.log", "append": "on"}


def test_log_console_directory_and_vm_regexp_from_the_environment(hooks, seed_xml):
    hooks.env["VMHOOKS_CONSOLE_LOG_DIR"] = "/srv/consoles"
    hooks.env["log_console_vm_regexp"] = "^my"
    root = ok(hooks.install("log_console").run("before_vm_start", into_devices(seed_xml, SERIAL)))
    assert root.find("devices/serial/log").get("file") == "/srv/consoles/myvm-console.log"
    hooks.env["log_console_vm_regexp"] = "^other"
    xml = into_devices(seed_xml, SERIAL)
    untouched(hooks.run("before_vm_start", xml), xml)


def test_log_console_without_a_serial_does_nothing(hooks, seed_xml):
    result = hooks.install("log_console").run("before_vm_start", seed_xml, {"log_console": "on"})
    untouched(result, seed_xml)
    assert "no serial console" in result.scripts[0].stderr


def test_log_console_already_logged_or_off(hooks, seed_xml):
    hooks.install("log_console")
    logged = into_devices(seed_xml, "<serial type='pty'><log file='/x.log'/><target port='0'/></serial>")
    untouched(hooks.run("before_vm_start", logged, {"log_console": "on"}), logged)
    plain = into_devices(seed_xml, SERIAL)
    untouched(hooks.run("before_vm_start", plain, {"log_console": "off"}), plain)


def test_log_console_refuses_other_values(hooks, seed_xml):
    refused(hooks.install("log_console").run("before_vm_start", seed_xml, {"log_console": "yes"}), 1,
            "log_console: invalid value")


# --- scratchpad (real qemu-img) ---------------------------------------------

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def is_qcow2(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"QFI\xfb"


@needs_qemu_img
def test_scratchpad_creates_attaches_and_removes_disks(hooks, seed_xml, tmp_path):
    hooks.install("scratchpad")
    first, second = tmp_path / "scratch-a.img", tmp_path / "scratch-b.img"
    value = f"1G,{first}:20M,{second}"
    root = ok(hooks.run("before_vm_start", seed_xml, {"scratchpad": value}))
    disks = disks_by_target(root)
    assert disks["vdb"].find("source").get("file") == str(first)
    assert disks["vdc"].find("source").get("file") == str(second)
    assert disks["vdb"].get("snapshot") == "no"
    assert disks["vdb"].find("driver").get("type") == "qcow2"
    assert is_qcow2(first) and is_qcow2(second)
    assert Path(f"{first}.vmhooks-scratchpad").read_text().strip() == SEED_UUID

    refusal = hooks.run("before_vm_migrate_source", seed_xml, {"scratchpad": value})
    assert refusal.scripts[0].rc == 2 and "cannot migrate a VM with scratch disks" in refusal.scripts[0].stderr

    # The first run (fast path) removes the disks: the second finds none left.
    destroyed_xml = ET.tostring(root, encoding="unicode")
    destroyed = hooks.run("after_vm_destroy", destroyed_xml, {"scratchpad": value}, compare=False)
    assert destroyed.scripts[0].status is Status.OK, destroyed.scripts[0].stderr
    assert not first.exists() and not second.exists()
    assert not Path(f"{first}.vmhooks-scratchpad").exists()


@needs_qemu_img
def test_scratchpad_never_overwrites_a_file_that_is_not_its_own(hooks, seed_xml, tmp_path):
    precious = tmp_path / "precious.img"
    precious.write_text("keep me")
    result = hooks.install("scratchpad").run("before_vm_start", seed_xml, {"scratchpad": f"1G,{precious}"})
    refused(result, 1, "is not a scratch disk of this VM: refusing to overwrite it")
    assert precious.read_text() == "keep me"
    # and after_vm_destroy does not remove it either
    hooks.run("after_vm_destroy", seed_xml, {"scratchpad": f"1G,{precious}"})
    assert precious.read_text() == "keep me"


@needs_qemu_img
def test_scratchpad_remakes_a_leftover_of_the_same_vm(hooks, seed_xml, tmp_path):
    hooks.install("scratchpad")
    image = tmp_path / "scratch.img"
    value = f"10M,{image}"
    ok(hooks.run("before_vm_start", seed_xml, {"scratchpad": value}))
    image.write_bytes(b"QFI\xfbstale")  # the VM crashed; after_vm_destroy never ran
    ok(hooks.run("before_vm_start", seed_xml, {"scratchpad": value}))
    assert is_qcow2(image) and image.stat().st_size > 9
    # another VM may not take it, nor remove it
    other = hooks.run("before_vm_start", seed_xml, {"scratchpad": value}, vm_id="another-vm")
    refused(other, 1, "refusing to overwrite it")
    hooks.run("after_vm_destroy", seed_xml, {"scratchpad": value}, vm_id="another-vm")
    assert image.exists()


@needs_qemu_img
def test_scratchpad_cleans_up_when_qemu_img_fails(hooks, seed_xml, tmp_path):
    good = tmp_path / "good.img"
    bad = tmp_path / "no-such-dir" / "bad.img"
    result = hooks.install("scratchpad").run("before_vm_start", seed_xml, {"scratchpad": f"1M,{good}:1M,{bad}"})
    refused(result, 1, "does not exist")
    assert not good.exists()


def test_scratchpad_without_qemu_img_says_so(hooks, seed_xml, tmp_path):
    hooks.env["PATH"] = str(tmp_path / "empty-bin")
    image = tmp_path / "scratch.img"
    result = hooks.install("scratchpad").run("before_vm_start", seed_xml, {"scratchpad": f"1G,{image}"})
    refused(result, 1, "scratchpad: qemu-img not found in PATH")
    assert not image.exists()


@pytest.mark.parametrize("value", ["1G", "1G,relative.img", "big,/a.img", "0,/a.img", "1G,/a/../b.img",
                                   "1G,/a.img:1G,/a.img"])
def test_scratchpad_refuses_a_malformed_value(hooks, seed_xml, value):
    refused(hooks.install("scratchpad").run("before_vm_start", seed_xml, {"scratchpad": value}), 1,
            "scratchpad: invalid value")


# --- all together, and libvirt's verdict ------------------------------------

ALL_PROPERTIES = {
    "pincpu": "1-4,^3,6",
    "hugepages": "512",
    "numa": "strict:1-4,^3",
    "qemu_cmdline": json.dumps(["-opt", "val"]),
    "smbios": "{'serial': '1234'}^{'vendor': 'oVirt'}",
    "cpuflags": "+mmx,-syscall,SAP",
    "diskunmap": "on",
    "httpsisoboot": "https://images.example.com:8443/isos/a.iso",
    "spiceoptions": "{'image': {'compression': 'glz'}, 'streaming': {'mode': 'filter'}}",
    "macspoof": "true",
    "floppy": "/images/a.vfd",
    "vmdisk": "/images/a.img:qcow2,/images/b.img:raw",
    "hostusb": "0x1234:0xbeef&0x2222:0xabaa",
    "smartcard": "true",
    "directlun": "mpatha:readonly,mpathb",
    "log_console": "on",
}


def test_the_whole_catalogue_output_is_a_domain_libvirt_accepts(hooks, seed_xml):
    libvirt = pytest.importorskip("libvirt")
    fake_sys_module(hooks, "kvm_intel", "Y")
    hooks.install(*catalogue.catalogue_names())
    xml = into_devices(with_filters(seed_xml), SERIAL + SCSI_DISK)
    result = hooks.run("before_vm_start", xml, ALL_PROPERTIES)
    assert not result.failed, result.error_message()
    assert sum(run.changed for run in result.scripts) == len(ALL_PROPERTIES) + 1  # + nestedvt
    libvirt.registerErrorHandler(lambda *args: None, None)
    connection = libvirt.open("test:///default")
    try:
        flags = 0
        if Path("/usr/share/libvirt/schemas/domain.rng").exists():
            flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE  # against libvirt's own schema
        domain = connection.defineXMLFlags(result.payload, flags)
        defined = ET.fromstring(domain.XMLDesc())
        assert defined.find("memoryBacking/hugepages") is not None
        assert defined.find("numatune/memory").get("mode") == "strict"
        assert defined.find("devices/smartcard") is not None
        domain.undefine()
    finally:
        connection.close()
