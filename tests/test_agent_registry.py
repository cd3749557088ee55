"""agent/registry: records and per-VM locks."""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import pytest
from agentproc import domain_xml

from vmhooks.agent.registry import Registry
from vmhooks.errors import WrongStateError
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
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "put_vm", full)
    with pytest.raises(sqlite3.OperationalError):
        registry.update(vm, status="paused")
    assert registry.get(vm.vm_id).status == "up"
    monkeypatch.undo()
    assert [record.status for record in Store(tmp_path / "db").vms()] == ["up"]
