"""agent/registry: records and per-VM locks."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from agentproc import AgentProcess, domain_xml, traced
from tmpfs import small_tmpfs  # noqa: F401  (fixture)

from vmhooks.agent.registry import Registry
from vmhooks.client import RpcError
from vmhooks.errors import StateError, WrongStateError
from vmhooks.store import Store, VmRecord


def test_vms_that_come_and_go_leave_no_lock_behind(agent):
    before = agent.context.registry.lock_count()
    for index in range(50):
        vm_id = str(uuid.uuid4())
        agent.create(domain_xml(f"cycle-{index}", vm_id))
        agent.pause(vm_id)
        agent.destroy(vm_id)
    # libvirt's events for these VMs are handled on a pool, each briefly taking
    # the VM's lock: once they are done, nothing may be left.
    deadline = time.monotonic() + 10
    while agent.context.registry.lock_count() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert agent.context.registry.lock_count() == before


def test_a_lock_is_shared_while_anyone_waits_for_it(tmp_path):
    registry = Registry(Store(tmp_path / "db"))
    vm_id = str(uuid.uuid4())
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with registry.locked(vm_id):
            inside.set()
            release.wait(5)
            order.append("first")

    def second() -> None:
        with registry.locked(vm_id):
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    inside.wait(5)
    threads[1].start()
    with pytest.raises(WrongStateError, match="busy"):
        with registry.locked(vm_id, blocking=False):
            pass
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first", "second"]
    assert registry.lock_count() == 0


def test_a_failed_write_changes_neither_memory_nor_disk(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    registry = Registry(store)
    vm = registry.put(VmRecord(str(uuid.uuid4()), "vm", "up", "<domain/>", {}, {}))

    def full(_vm: VmRecord) -> None:
        raise StateError("writing VM x to the state database db: database or disk is full")

    monkeypatch.setattr(store, "put_vm", full)
    with pytest.raises(StateError):
        registry.update(vm, status="paused")
    assert registry.get(vm.vm_id).status == "up"
    monkeypatch.undo()
    assert [record.status for record in Store(tmp_path / "db").vms()] == ["up"]


def test_a_full_disk_blocks_no_destroy_and_leaves_no_phantom_vm(small_tmpfs, tmp_path, hooks_dir, make_hook):
    """The state dir on a real tmpfs, filled to the last page while the agent
    runs: history is dropped (and counted), VMs can still be paused and
    destroyed, a VM that cannot be recorded is refused before any hook, and
    nothing of it is left once space is back."""
    trace = tmp_path / "trace.log"
    points = ("before_vm_start", "before_vm_pause", "before_vm_destroy", "after_vm_destroy")
    for point in points:  # big stderr: every history write is a big one
        make_hook(point, "10_trace", f'echo "{point} $vmId" >> {trace}; head -c 100000 /dev/zero | tr "\\0" x >&2')
    agent = AgentProcess(tmp_path / "agent", hooks_dir)
    agent.state_dir = small_tmpfs.path / "state"
    agent.start()
    try:
        first, second, third = (str(uuid.uuid4()) for _ in range(3))
        agent.call("VM.create", xml=domain_xml("first", first))
        small_tmpfs.fill()

        assert agent.call("VM.pause", vmId=first)["status"] == "paused"
        assert agent.call("VM.list")[0]["status"] == "paused"
        assert agent.call("VM.destroy", vmId=first)["status"] == "down"
        assert agent.call("VM.list") == []
        big = domain_xml("second", second).replace("<name>", f"<description>{'d' * 300_000}</description><name>", 1)
        with pytest.raises(RpcError) as error:
            agent.call("VM.create", xml=big)
        assert "\n" not in str(error.value) and "database or disk is full" in str(error.value)
        assert agent.call("VM.list") == []
        counters = agent.call("Host.getHookHistory", limit=1)["counters"]
        assert counters["history_write_failures"] > 0 and counters["vm_write_failures"] > 0

        small_tmpfs.free()
        assert agent.call("VM.list") == []
        with pytest.raises(RpcError) as error:
            agent.call("VM.destroy", vmId=second)
        assert error.value.code == 2  # no such VM: nothing to run hooks for
        agent.call("VM.create", xml=domain_xml("third", third))
        assert [o["result"] for o in agent.call("Host.getHookHistory", vmId=third)["operations"]] == ["ok"]
    finally:
        assert agent.stop() == 0
    assert traced(trace, second) == []  # no hook ever ran for the VM that never started
    assert traced(trace, first) == ["before_vm_start", "before_vm_pause", "before_vm_destroy", "after_vm_destroy"]
    # The disk caught up with memory: a restart forgets only what it must.
    restarted = AgentProcess(tmp_path / "agent", hooks_dir)
    restarted.state_dir = agent.state_dir
    restarted.start()
    try:
        assert restarted.call("VM.list") == []  # test:///default lost "third" with the old process
    finally:
        restarted.stop()
    assert traced(trace, first) == ["before_vm_start", "before_vm_pause", "before_vm_destroy", "after_vm_destroy"]  # not twice
    assert traced(trace, third)[-1] == "after_vm_destroy"  # "stopped while the agent was away"
