"""The agent's observers: told of every recorded chain and every
operation's outcome, and never able to disturb the agent."""
from __future__ import annotations

from typing import Any

import pytest

from vmhooks.agent.observers import OK, OperationOutcome
from vmhooks.errors import HookError, NoSuchVmError
from vmhooks.runner import ChainResult


class Recorder:
    def __init__(self) -> None:
        self.chains: list[tuple[str, str | None, ChainResult]] = []
        self.outcomes: list[OperationOutcome] = []

    def chain_recorded(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        self.chains.append((operation, vm_id, result))

    def operation_finished(self, outcome: OperationOutcome) -> None:
        self.outcomes.append(outcome)


class Broken:
    def chain_recorded(self, *args: Any) -> None:
        raise RuntimeError("observer bug")

    def operation_finished(self, *args: Any) -> None:
        raise RuntimeError("observer bug")


def test_observers_see_each_chain_with_scripts_and_each_operation(agent, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    make_hook("after_vm_pause", "10_b", "echo failing >&2; exit 1\n")
    recorder = Recorder()
    agent.observers.add(recorder)
    vm_id = agent.create(seed_xml)["vmId"]
    agent.pause(vm_id)
    agent.cont(vm_id)  # no hook at before/after_vm_cont: no chain to tell of

    assert [(op, vm, result.point.name) for op, vm, result in recorder.chains] == [
        ("create", vm_id, "before_vm_start"),
        ("pause", vm_id, "after_vm_pause"),
    ]
    assert [run.name for run in recorder.chains[1][2].scripts] == ["10_b"]
    assert [(o.operation, o.vm_id, o.result) for o in recorder.outcomes] == [
        ("create", vm_id, OK),  # the id the agent took from the XML
        ("pause", vm_id, OK),
        ("cont", vm_id, OK),
    ]
    assert all(outcome.duration_s >= 0 for outcome in recorder.outcomes)


def test_a_failed_operation_is_told_with_its_error_kind(agent, make_hook, seed_xml):
    make_hook("before_vm_start", "10_refuse", "exit 2\n")
    recorder = Recorder()
    agent.observers.add(recorder)
    with pytest.raises(HookError):
        agent.create(seed_xml)
    with pytest.raises(NoSuchVmError):
        agent.pause("0b5c4f4e-1c1c-4c4c-8c8c-000000000001")
    with pytest.raises(NoSuchVmError):
        agent.device_operation("hotplugNic", "0b5c4f4e-1c1c-4c4c-8c8c-000000000001", "<interface type='bridge'/>")
    assert [(o.operation, o.result) for o in recorder.outcomes] == [
        ("create", "hook_error"),
        ("pause", "no_such_vm"),
        ("hotplugNic", "no_such_vm"),  # a device operation is named by itself
    ]
    assert recorder.chains[0][2].scripts[0].name == "10_refuse"


def test_a_broken_observer_disturbs_neither_the_agent_nor_the_others(agent, make_hook, seed_xml, caplog):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    recorder = Recorder()
    agent.observers.add(Broken())
    agent.observers.add(recorder)
    vm_id = agent.create(seed_xml)["vmId"]
    assert agent.list_vms()[0]["status"] == "up"
    assert [o.operation for o in recorder.outcomes] == ["create"]
    assert len(recorder.chains) == 1
    assert "observer" in caplog.text and "observer bug" in caplog.text
    agent.observers.remove(recorder)
    agent.destroy(vm_id)
    assert [o.operation for o in recorder.outcomes] == ["create"]  # removed: told nothing more
