"""The agent in-process on libvirt's test driver: what only the agent's own
libvirt connection can provoke (a VM that stops or pauses by itself)."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import libvirt
import pytest
from agentproc import domain_xml, trace_hooks, traced

from vmhooks.agent.core import Agent
from vmhooks.config import AgentSettings
from vmhooks.errors import HookError, NoSuchVmError, UsageError, WrongStateError


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path):
    settings = AgentSettings(
        libvirt_uri="test:///default",
        hooks_dir=hooks_dir,
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        hook_timeout=10,
    )
    instance = Agent(settings)
    instance.start()
    yield instance
    instance.stop()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_vm_that_stops_by_itself_gets_after_vm_destroy(agent, hooks_dir, tmp_path):
    log = tmp_path / "trace.log"
    trace_hooks(hooks_dir, ["after_vm_destroy"], log)
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml(f"self-stop-{vm_id[:8]}", vm_id))
    agent.conn.lookupByUUIDString(vm_id).destroy()  # behind the agent's back
    wait_for(lambda: traced(log, vm_id) == ["after_vm_destroy"])
    wait_for(lambda: agent.list_vms() == [])
    assert [r["operation"] for r in agent.history(vm_id, "after_vm_destroy")] == ["event"]


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
