from __future__ import annotations

from pathlib import Path

from vmhooks.points import get_point
from vmhooks.runner import ChainResult, ScriptRun, Status
from vmhooks.store import COUNTERS, Store, VmRecord


def chain(point: str, *runs: ScriptRun, warnings: tuple[str, ...] = ()) -> ChainResult:
    return ChainResult(get_point(point), runs, None, "", None, False, warnings)


def test_vms_round_trip_and_survive_reopen(tmp_path: Path):
    store = Store(tmp_path / "db")
    vm = VmRecord("id-1", "a", "up", "<domain/>", {"p": "1"}, {"vda": {"q": "2"}}, None)
    store.put_vm(vm)
    store.put_vm(vm._replace(status="paused"))
    store.close()
    reopened = Store(tmp_path / "db")
    assert reopened.vms() == [vm._replace(status="paused")]
    reopened.delete_vm("id-1")
    assert reopened.vms() == []


def test_record_chain_alone_is_an_operation_of_its_own(tmp_path: Path):
    """What a caller outside the agent (the KubeVirt sidecar) records."""
    store = Store(tmp_path / "db")
    ok = ScriptRun("10_a", Status.OK, 0, 0.01, "", True, "+x\n")
    bad = ScriptRun("20_b", Status.STOPPED_CHAIN, 2, 0.02, "no\n", False, "", "exit 2, chain stopped")
    store.record_chain("create", "vm-1", chain("before_vm_start", ok, bad))
    store.record_chain("pause", "vm-2", chain("after_vm_pause", ok), vm_name="two", caller="kubevirt")
    store.record_chain("pause", "vm-2", chain("after_vm_pause", warnings=("undeclared",)))  # nothing ran: nothing kept
    first, second = store.history()["operations"]
    assert (first["operation"], first["vm_id"], first["hooks_run"], first["hooks_failed"]) == ("create", "vm-1", 2, 1)
    assert first["result"].startswith("before_vm_start: 20_b failed (exit 2, chain stopped)")
    assert first["error_kind"] == "hook_error"
    assert [r["diff"] for r in first["chains"][0]["runs"]] == ["+x\n", ""]
    assert (second["vm_name"], second["caller"], second["result"]) == ("two", "kubevirt", "ok")


def test_counters_start_at_zero(tmp_path: Path):
    assert Store(tmp_path / "db").counters() == dict.fromkeys(COUNTERS, 0)
