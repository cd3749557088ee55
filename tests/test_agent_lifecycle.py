"""agent/lifecycle: what create hands to hooks and to libvirt."""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest
from agentproc import domain_xml

from vmhooks.errors import UsageError

SOME_UUID = "3573e29e-5de9-468a-9fae-16050c6b3dcc"


@pytest.mark.parametrize(
    "uuid_element, vm_id",
    [
        ("", None),  # no <uuid> at all
        ("<uuid/>", None),
        ("<uuid></uuid>", None),
        ("<uuid>  \n </uuid>", None),
        ("", SOME_UUID),
        ("<uuid/>", SOME_UUID),
        (f"<uuid>{SOME_UUID.upper()}</uuid>", None),  # not canonical
        (f"<uuid>{SOME_UUID.replace('-', '')}</uuid>", None),
        (f"<uuid> {SOME_UUID} </uuid>", SOME_UUID.upper()),
    ],
)
def test_agent_hooks_and_libvirt_see_one_uuid(agent, make_hook, marks, uuid_element, vm_id):
    # Each hook writes down the <uuid> of the XML it was given.
    for point in ("before_vm_start", "after_vm_start"):
        make_hook(point, "10_uuid", f"""
            sed -n 's:.*<uuid>\\(.*\\)</uuid>.*:\\1:p' "$_hook_domxml" > {marks}/{point}
            grep -c '<uuid' "$_hook_domxml" > {marks}/{point}.count
        """)
    xml = domain_xml("one-uuid", "PLACEHOLDER").replace("<uuid>PLACEHOLDER</uuid>", uuid_element)
    result = agent.create(xml, vmId=vm_id)
    recorded = result["vmId"]
    assert recorded == str(uuid.UUID(recorded))
    if vm_id is not None or uuid_element.strip("<uuid/> \n"):
        assert recorded == SOME_UUID
    for point in ("before_vm_start", "after_vm_start"):
        assert (marks / point).read_text().strip() == recorded
        assert (marks / f"{point}.count").read_text().strip() == "1"
    domain = agent.conn.lookupByUUIDString(recorded)
    assert domain.UUIDString() == recorded and domain.isActive()
    assert ET.fromstring(agent.getXML(recorded)).findtext("uuid") == recorded
    # The VM is manageable under that id: pause reaches the domain, destroy stops it.
    assert agent.pause(recorded)["status"] == "paused"
    assert domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    agent.destroy(recorded)
    assert recorded not in {d.UUIDString() for d in agent.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    # ... and the same XML can be created again.
    again = agent.create(xml, vmId=vm_id)
    agent.destroy(again["vmId"])


@pytest.mark.parametrize("extra", ["<uuid>00000000-0000-0000-0000-000000000001</uuid>", "<name>two</name>"])
def test_two_uuids_or_names_are_refused(agent, extra):
    xml = domain_xml("dup", SOME_UUID).replace("</uuid>", "</uuid>" + extra)
    with pytest.raises(UsageError, match="more than one <uuid> or <name>"):
        agent.create(xml)
    assert agent.list_vms() == []
    assert "dup" not in {d.name() for d in agent.conn.listAllDomains()}


def test_bad_uuid_is_refused_before_anything_runs(agent, make_hook, marks):
    make_hook("before_vm_start", "10_mark", f"touch {marks}/ran")
    with pytest.raises(UsageError, match="is not a UUID"):
        agent.create(domain_xml("bad", "not-a-uuid"))
    assert not (marks / "ran").exists()
    assert agent.list_vms() == []


def test_device_properties_are_matched_in_linear_time(agent, monkeypatch):
    # Counted, not timed: one index per request instead of a scan per device.
    from vmhooks import domxml

    count = 400
    nics = "".join(
        f"<interface type='bridge'><mac address='52:54:00:00:{i >> 8:02x}:{i & 255:02x}'/>"
        f"<source bridge='br0'/></interface>"
        for i in range(count)
    )
    xml = domain_xml("many-nics", str(uuid.uuid4())).replace("<devices>", f"<devices>{nics}")
    device_custom = {f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}": {"mark": str(i)} for i in range(count)}
    calls = 0
    real = domxml.device_keys

    def counted(device):
        nonlocal calls
        calls += 1
        return real(device)

    monkeypatch.setattr(domxml, "device_keys", counted)
    result = agent.create(xml, deviceCustom=device_custom)
    assert count <= calls <= 10 * (count + 3)  # a few passes over the devices, never count * count
    agent.destroy(result["vmId"])
