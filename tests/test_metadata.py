"""Custom properties in Engine's domain <metadata>: read from a request's
XML, merged under the call's own, written back into the domain the agent
starts, and found again by a restarted agent that lost its state."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from agentproc import domain_xml

from vmhooks import metadata
from vmhooks.agent import Agent
from vmhooks.domxml import device_index
from vmhooks.config import AgentSettings
from vmhooks.errors import UsageError

MAC = "52:54:00:12:34:56"
ENGINE = f"""<metadata><ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
  <ovirt-vm:version type="float">4.2</ovirt-vm:version>
  <ovirt-vm:custom><ovirt-vm:pincpu>0-1</ovirt-vm:pincpu><ovirt-vm:sla>gold</ovirt-vm:sla></ovirt-vm:custom>
  <ovirt-vm:device mac_address="{MAC.upper()}"><ovirt-vm:network>ovirtmgmt</ovirt-vm:network>
    <ovirt-vm:custom><ovirt-vm:extnet>red</ovirt-vm:extnet></ovirt-vm:custom></ovirt-vm:device>
  <ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:custom><ovirt-vm:diskunmap>on</ovirt-vm:diskunmap></ovirt-vm:custom></ovirt-vm:device>
  <ovirt-vm:device devtype="disk" name="vdz"><ovirt-vm:custom><ovirt-vm:gone>1</ovirt-vm:gone></ovirt-vm:custom></ovirt-vm:device>
</ovirt-vm:vm></metadata>"""


def engine_xml(name: str, vm_id: str) -> str:
    return domain_xml(name, vm_id).replace("</domain>", ENGINE + "</domain>")


def test_read_takes_vm_and_device_properties() -> None:
    found = metadata.read(ET.fromstring(engine_xml("a", str(uuid.uuid4()))))
    assert found.custom == {"pincpu": "0-1", "sla": "gold"}
    assert found.devices == {MAC: {"extnet": "red"}, "vda": {"diskunmap": "on"}, "vdz": {"gone": "1"}}
    assert metadata.read(ET.fromstring(domain_xml("b", str(uuid.uuid4())))).empty


def test_the_calls_own_properties_win() -> None:
    found = metadata.read(ET.fromstring(engine_xml("a", str(uuid.uuid4()))))
    custom, devices = metadata.merged(found, {"pincpu": "3"}, {"VDA": {"diskunmap": "off", "x": "1"}})
    assert custom == {"pincpu": "3", "sla": "gold"}
    assert devices["vda"] == {"diskunmap": "off", "x": "1"} and devices[MAC] == {"extnet": "red"}


def test_write_round_trips_and_keeps_the_rest_of_the_metadata() -> None:
    root = ET.fromstring(engine_xml("a", str(uuid.uuid4())))
    metadata.write(root, {"pincpu": "5"}, {MAC: {"extnet": "blue"}, "vda": {}}, device_index(root))
    again = ET.fromstring(ET.tostring(root, encoding="unicode"))
    assert metadata.read(again).custom == {"pincpu": "5"}
    assert metadata.read(again).devices == {MAC: {"extnet": "blue"}, "vdz": {"gone": "1"}}
    assert again.findtext(f"metadata/{metadata.VM}/{{{metadata.NS}}}version") == "4.2"
    assert 'xmlns:ovirt-vm="http://ovirt.org/vm/1.0"' in ET.tostring(root, encoding="unicode")
    plain = ET.fromstring(domain_xml("b", str(uuid.uuid4())))
    metadata.write(plain, {}, {}, device_index(plain))
    assert plain.find("metadata") is None  # nothing to say: nothing added


def test_create_takes_engines_properties_and_writes_them_back(agent, make_hook, marks) -> None:
    make_hook("before_vm_start", "10_env", f'echo "$pincpu $sla" > {marks}/vm')
    make_hook("before_device_create", "10_env", f'echo "$extnet$diskunmap" >> {marks}/devices')
    vm_id = str(uuid.uuid4())
    agent.create(engine_xml("engine-vm", vm_id), custom={"sla": "silver"})
    assert (marks / "vm").read_text() == "0-1 silver\n"  # the call's own win
    assert sorted((marks / "devices").read_text().split()) == ["on", "red"]
    live = ET.fromstring(agent.context.lookup(vm_id).XMLDesc(0))
    found = metadata.read(live)
    assert found.custom == {"pincpu": "0-1", "sla": "silver"}
    assert found.devices == {MAC: {"extnet": "red"}, "vda": {"diskunmap": "on"}, "vdz": {"gone": "1"}}
    assert {vm["vmId"]: vm["custom"] for vm in agent.list_vms()}[vm_id] == {"pincpu": "0-1", "sla": "silver"}


def test_a_plain_call_also_lands_in_the_metadata(agent) -> None:
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("plain-vm", vm_id), custom={"pincpu": "1"}, deviceCustom={"vda": {"diskunmap": "on"}})
    live = ET.fromstring(agent.context.lookup(vm_id).XMLDesc(0))
    assert metadata.read(live) == metadata.EngineProperties({"pincpu": "1"}, {"vda": {"diskunmap": "on"}})


def test_engines_properties_are_checked_like_any_other(agent, make_hook, marks) -> None:
    make_hook("before_vm_start", "10_ran", f"touch {marks}/ran")
    bad = engine_xml("bad", str(uuid.uuid4())).replace("<ovirt-vm:sla>gold</ovirt-vm:sla>", "<ovirt-vm:LD_PRELOAD>x</ovirt-vm:LD_PRELOAD>")
    with pytest.raises(UsageError, match="LD_PRELOAD"):
        agent.create(bad)
    ruled = Agent(agent.context.settings._replace(properties="pincpu=^[0-9]$"))
    with pytest.raises(UsageError, match="pincpu"):
        ruled.create(engine_xml("ruled", str(uuid.uuid4())))
    assert not (marks / "ran").exists()


def test_a_restarted_agent_without_its_state_finds_the_properties(tmp_path: Path, hooks_dir: Path) -> None:
    keep = libvirt.open("test:///default")  # the test driver's state lives while a connection does
    try:
        first = Agent(AgentSettings(libvirt_uri="test:///default", hooks_dir=hooks_dir, state_dir=tmp_path / "s1",
                                    run_dir=tmp_path / "r1"))  # fmt: skip
        first.start()
        vm_id = str(uuid.uuid4())
        first.create(engine_xml("survivor", vm_id), custom={"sla": "silver"})
        first.stop()
        second = Agent(AgentSettings(libvirt_uri="test:///default", hooks_dir=hooks_dir, state_dir=tmp_path / "s2",
                                     run_dir=tmp_path / "r2"))  # fmt: skip
        second.start()
        try:
            vms = {vm["vmId"]: vm for vm in second.list_vms()}
            assert vms[vm_id]["custom"] == {"pincpu": "0-1", "sla": "silver"}
            assert vms[vm_id]["status"] == "up"
            assert second.context.registry.get(vm_id).device_custom == {MAC: {"extnet": "red"}, "vda": {"diskunmap": "on"}}
            assert all(vm["name"] != "test" for vm in vms.values())  # the driver's own domain has no metadata
            second.destroy(vm_id)
        finally:
            second.stop()
    finally:
        keep.close()


def test_hooks_run_reads_the_metadata_and_prop_wins(tmp_path: Path, hooks_dir: Path, make_hook) -> None:
    make_hook("before_vm_start", "10_env", 'echo "pincpu=$pincpu sla=$sla" >&2')
    xml = tmp_path / "engine.xml"
    xml.write_text(engine_xml("offline", str(uuid.uuid4())))
    vmhooks = [sys.executable, "-m", "vmhooks.cli", "hooks", "run", "before_vm_start", "--hooks-dir", str(hooks_dir),
               "--xml", str(xml), "--output", "json"]  # fmt: skip
    report = json.loads(subprocess.run([*vmhooks, "--prop", "sla=bronze"], capture_output=True, text=True).stdout)
    assert report["scripts"][0]["stderr"] == "pincpu=0-1 sla=bronze\n"
