"""The agent in-process on libvirt's test driver: what only the agent's own
libvirt connection can provoke (a VM that stops or pauses by itself)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from agentproc import domain_xml, hook_runs, trace_hooks, traced, wait_for

from vmhooks.agent import Agent
from vmhooks.agent.events import handle_event
from vmhooks.config import AgentSettings
from vmhooks.errors import HookError, NoSuchVmError, UsageError, WrongStateError


def test_vm_that_stops_by_itself_gets_after_vm_destroy(agent, hooks_dir, tmp_path):
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["after_vm_destroy"], log)
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"self-stop-{vm_id[:8]}", vm_id))
    agent.conn.lookupByUUIDString(vm_id).destroy()  # behind the agent's back
    wait_for(lambda: [r["operation"] for r in hook_runs(agent.history(vm_id, "after_vm_destroy"))] == ["event"])
    assert traced(log, vm_id) == ["after_vm_destroy"]
    assert agent.list_vms() == []


def test_vm_that_pauses_by_itself_gets_after_vm_pause(agent, hooks_dir, tmp_path):
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["before_vm_pause", "after_vm_pause"], log)
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"self-pause-{vm_id[:8]}", vm_id))
    agent.conn.lookupByUUIDString(vm_id).suspend()
    wait_for(lambda: traced(log, vm_id) == ["after_vm_pause"])
    assert agent.list_vms()[0]["status"] == "paused"
    agent.conn.lookupByUUIDString(vm_id).resume()
    wait_for(lambda: agent.list_vms()[0]["status"] == "up")
    agent.destroy(vm_id)


def test_own_operations_do_not_fire_hooks_twice(agent, hooks_dir, tmp_path):
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["after_vm_pause", "after_vm_destroy"], log)
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"own-{vm_id[:8]}", vm_id))
    agent.pause(vm_id)
    agent.destroy(vm_id)
    time.sleep(0.5)  # let any (wrong) event-driven hook run
    assert traced(log, vm_id) == ["after_vm_pause", "after_vm_destroy"]


def test_create_checks_its_input(agent):
    with pytest.raises(UsageError, match="differs from the domain's <uuid>"):
        agent.create(domain_xml("x", str(uuid.uuid4())), vmId=str(uuid.uuid4()))
    with pytest.raises(UsageError, match="no device with alias, MAC or target 'nope'"):
        agent.create(domain_xml("x", str(uuid.uuid4())), deviceCustom={"nope": {"a": "1"}})
    with pytest.raises(UsageError, match="expected <domain>"):
        agent.create("<interface/>")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"dup-{vm_id[:8]}", vm_id))
    with pytest.raises(WrongStateError, match="already exists"):
        agent.create(domain_xml(f"dup-{vm_id[:8]}", vm_id))
    agent.destroy(vm_id)
    with pytest.raises(NoSuchVmError):
        agent.destroy(vm_id)


def test_domain_without_uuid_gets_one(agent):
    xml = domain_xml("nouuid", "x").replace("<uuid>x</uuid>", "")
    result = agent.create(xml)
    assert str(uuid.UUID(result["vmId"])) == result["vmId"]
    assert agent.conn.lookupByUUIDString(result["vmId"]).name() == "nouuid"
    agent.destroy(result["vmId"])


def test_dehibernate_edits_reach_libvirt_or_fail_clearly(agent, make_hook):
    # libvirt's test driver cannot restore with an edited XML: the edit is not
    # silently dropped (upstream's defect), the restore fails with the reason.
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"hib-{vm_id[:8]}", vm_id))
    agent.hibernate(vm_id)
    make_hook("before_vm_dehibernate", "50_edit", "sed -i 's|<vcpu |<vcpu cpuset=\"0\" |' \"$_hook_domxml\"")
    with pytest.raises(Exception, match="not supported by this libvirt driver"):
        agent.dehibernate(vm_id)
    assert agent.list_vms()[0]["status"] == "hibernated"
    make_hook("before_vm_dehibernate", "50_edit", "exit 0")
    assert agent.dehibernate(vm_id)["status"] == "up"
    agent.destroy(vm_id)


def test_before_device_destroy_failure_keeps_the_vm_running(agent, make_hook):
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"dd-{vm_id[:8]}", vm_id), deviceCustom={"vda": {"keep": "1"}})
    make_hook("before_device_destroy", "50_no", "echo 'disk busy' >&2; exit 2")
    with pytest.raises(HookError, match="disk busy"):
        agent.destroy(vm_id)
    assert agent.conn.lookupByUUIDString(vm_id).isActive()
    make_hook("before_device_destroy", "50_no", "exit 0")
    agent.destroy(vm_id)
    with pytest.raises(libvirt.libvirtError):
        agent.conn.lookupByUUIDString(vm_id)


def test_displays_without_password_start_locked(agent, make_hook, tmp_path):
    seen = tmp_path / "seen.xml"
    make_hook("before_vm_start", "50_copy", f'cp "$_hook_domxml" {seen}')
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"locked-{vm_id[:8]}", vm_id))
    assert "passwd" not in seen.read_text()  # hooks see the XML as it was sent
    secure = agent.conn.lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    graphics = [line for line in secure.splitlines() if "<graphics" in line][0]
    assert "passwd='" in graphics and "passwdValidTo='1970-01-01T00:00:01'" in graphics
    agent.destroy(vm_id)


def test_destination_adopts_a_migrated_vm_the_source_never_finished(agent, hooks_dir, tmp_path, monkeypatch):
    # The source died after libvirt migrated the VM: libvirt's event is all the
    # destination hears. (The test driver cannot migrate: the VM "arrives" by
    # being started behind the agent's back, and the event is handed in.)
    monkeypatch.setattr(agent.context, "migration_finish_grace", 0.2)
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["before_vm_migrate_destination", "after_vm_migrate_destination"], log)
    vm_id = str(uuid.uuid4())
    xml = domain_xml(f"orphan-{vm_id[:8]}", vm_id)
    agent.migrationCreate(vm_id, xml)
    assert agent.list_vms()[0]["status"] == "incoming"
    agent.conn.createXML(xml, 0)
    handle_event(agent.context, vm_id, libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
    wait_for(lambda: [r["operation"] for r in hook_runs(agent.history(vm_id, "after_vm_migrate_destination"))] == ["event"])
    assert traced(log, vm_id) == ["before_vm_migrate_destination", "after_vm_migrate_destination"]
    assert agent.list_vms()[0]["status"] == "up"
    # A late migrationFinish changes nothing and runs no hook twice.
    assert agent.migrationFinish(vm_id, True)["status"] == "up"
    assert traced(log, vm_id) == ["before_vm_migrate_destination", "after_vm_migrate_destination"]
    agent.destroy(vm_id)


def test_incoming_vm_that_never_arrives_is_dropped(agent):
    vm_id = str(uuid.uuid4())
    agent.migrationCreate(vm_id, domain_xml(f"never-{vm_id[:8]}", vm_id))
    assert agent.migrationFinish(vm_id, False)["status"] == "down"
    assert agent.list_vms() == []


@pytest.mark.parametrize(
    "change, refusal",
    [
        ({"libvirtUri": "qemu+ext:///system?command=/tmp/evil"}, "libvirt URI we refuse"),
        ({"libvirtUri": "qemu+tls://peer/system?no_verify=1"}, "libvirt URI we refuse"),
        ({"libvirtUri": "qemu+ssh://peer/system?netcat=/tmp/evil"}, "libvirt URI we refuse"),
        ({"migrationUri": "unix:///tmp/sock"}, "migration URI we refuse"),
        ({"xml": "<domain><name>other</name><uuid>00000000-0000-0000-0000-000000000001</uuid></domain>"}, "another domain"),
        ({"xml": "<nope"}, "domain XML we refuse"),
        ({"libvirtUri": 5}, "malformed"),
    ],
)
def test_a_destination_offer_is_checked(change, refusal):
    from vmhooks.agent.migration import check_offer
    from vmhooks.store import VmRecord

    vm_id = str(uuid.uuid4())
    vm = VmRecord(vm_id, "mine", "up", "", {}, {})
    good = {
        "xml": domain_xml("mine", vm_id),
        "libvirtUri": "qemu+unix:///session?socket=/tmp/vmh-1/libvirt-sock",
        "migrationUri": "tcp://10.213.0.2:49152",
        "listenAddress": "10.213.0.2",
    }
    check_offer(good, vm)
    with pytest.raises(WrongStateError, match=refusal):
        check_offer({**good, **change}, vm)


def test_an_announced_migration_that_never_arrives_expires(agent, monkeypatch):
    monkeypatch.setattr(agent.context, "incoming_timeout", 0.2)
    vm_id = str(uuid.uuid4())
    agent.migrationCreate(vm_id, domain_xml(f"ghost-{vm_id[:8]}", vm_id))
    assert agent.list_vms()[0]["status"] == "incoming"
    wait_for(lambda: agent.list_vms() == [])
    # And the same VM may be announced again.
    agent.migrationCreate(vm_id, domain_xml(f"ghost-{vm_id[:8]}", vm_id))
    agent.migrationFinish(vm_id, False)


def test_a_vm_that_runs_here_is_adopted_even_if_the_source_says_failed(agent, hooks_dir, tmp_path):
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["after_vm_migrate_destination"], log)
    vm_id = str(uuid.uuid4())
    xml = domain_xml(f"split-{vm_id[:8]}", vm_id)
    agent.migrationCreate(vm_id, xml)
    agent.conn.createXML(xml, 0)
    assert agent.migrationFinish(vm_id, False)["status"] == "up"
    assert traced(log, vm_id) == ["after_vm_migrate_destination"]
    agent.destroy(vm_id)


def test_migrating_to_itself_is_refused_not_deadlocked(agent):
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"self-{vm_id[:8]}", vm_id))
    with agent.context.registry.locked(vm_id):  # what a migration holds while it asks the destination
        outcome: list[BaseException] = []
        worker = threading.Thread(target=lambda: _capture(outcome, agent.migrationCreate, vm_id, domain_xml("x", vm_id)))
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
    assert isinstance(outcome[0], WrongStateError) and "busy" in str(outcome[0])
    agent.destroy(vm_id)


def test_unknown_vm_ids_leave_no_trace(agent):
    before = agent.context.registry.lock_count()
    for _ in range(100):
        with pytest.raises(NoSuchVmError):
            agent.getStats(str(uuid.uuid4()))
    assert agent.context.registry.lock_count() == before


def _capture(outcome: list, function, *args) -> None:
    try:
        function(*args)
    except BaseException as exc:  # handed to the test thread
        outcome.append(exc)
