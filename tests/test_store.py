from __future__ import annotations

from pathlib import Path

from vmhooks.points import get_point
from vmhooks.runner import ChainResult, ScriptRun, Status
from vmhooks.store import Store, VmRecord


def chain(point: str, *runs: ScriptRun) -> ChainResult:
    return ChainResult(get_point(point), runs, None, "", None, False)


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


def test_history_filters_and_keeps_order(tmp_path: Path):
    store = Store(tmp_path / "db")
    ok = ScriptRun("10_a", Status.OK, 0, 0.01, "", True, "+x\n")
    bad = ScriptRun("20_b", Status.STOPPED_CHAIN, 2, 0.02, "no\n", False, "", "exit 2, chain stopped")
    store.record_chain("create", "vm-1", chain("before_vm_start", ok, bad))
    store.record_chain("pause", "vm-2", chain("before_vm_pause", ok))
    store.record_chain("pause", "vm-2", chain("after_vm_pause"))  # nothing ran: not recorded
    everything = store.history()
    assert [(r["vm_id"], r["point"], r["script"]) for r in everything] == [
        ("vm-1", "before_vm_start", "10_a"),
        ("vm-1", "before_vm_start", "20_b"),
        ("vm-2", "before_vm_pause", "10_a"),
    ]
    assert everything[1]["status"] == "stopped-chain" and everything[1]["rc"] == 2
    assert everything[0]["changed"] is True and everything[0]["diff"] == "+x\n"
    assert [r["script"] for r in store.history(vm_id="vm-1", point="before_vm_start", limit=1)] == ["20_b"]
    assert store.history(point="nothing") == []


def test_prune_forgets_old_chains_and_their_runs(tmp_path: Path):
    store = Store(tmp_path / "db")
    ok = ScriptRun("10_a", Status.OK, 0, 0.01, "", False)
    store.record_chain("create", "vm-1", chain("before_vm_start", ok))
    cutoff = store.history()[-1]["time"] + 1e-6
    store.record_chain("pause", "vm-1", chain("before_vm_pause", ok, ok))
    store._db.execute("UPDATE chains SET time = ? WHERE point = 'before_vm_pause'", (cutoff + 10,))
    assert store.prune(cutoff) == 1
    assert [r["point"] for r in store.history()] == ["before_vm_pause", "before_vm_pause"]
    assert store._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
