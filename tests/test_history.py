"""history: what one run keeps, pages and their cursor, pruning, the read
functions a console builds on."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmhooks import history
from vmhooks.history import Filters, OperationRecord
from vmhooks.points import get_point
from vmhooks.runner import ChainResult, ScriptRun, Status
from vmhooks.store import Store

OK = ScriptRun("10_a", Status.OK, 0, 0.01, "", False)
BAD = ScriptRun("20_b", Status.ERROR, 1, 0.02, "it broke\n", False, "", "")


def chain(point: str, *runs: ScriptRun, warnings: tuple[str, ...] = ()) -> ChainResult:
    return ChainResult(get_point(point), runs, None, "", None, False, warnings)


def operation(store: Store, name: str, vm_id: str | None = "vm-1", *chains: ChainResult, when: float = 1000.0,
              result: str = "ok", polled: bool = False, vm_name: str | None = "one") -> int:  # fmt: skip
    record = OperationRecord(when, name, vm_id, vm_name, "test", polled)
    row = store.begin_operation(record)
    for result_chain in chains:
        store.add_chain(row, name, vm_id, result_chain)
    runs = [run for c in chains for run in c.scripts]
    store.finish_operation(row, record._replace(result=result, duration_s=0.5, hooks_run=len(runs),
                                                hooks_failed=sum(r.failed for r in runs)))  # fmt: skip
    return row


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vmhooks.db")


def test_cut_keeps_head_and_tail_and_says_how_much_went():
    assert history.cut("short") == "short"
    text = "é" * 100_000  # two bytes each: the cut must not split one
    cut = history.cut(text)
    assert len(cut.encode()) <= history.MAX_TEXT_BYTES
    head, marker, tail = cut.partition("\n[... ")
    assert set(head) == {"é"} and tail.endswith("é" * 100) and "bytes cut by vmhooks ...]" in tail
    gone = int(tail.split(" ")[0])
    assert gone + len(head.encode()) + len(tail.split("]\n", 1)[1].encode()) in (200_000, 199_999, 199_998)


def test_a_run_keeps_at_most_64_kib_of_stderr_and_of_diff(store: Store):
    huge = ScriptRun("10_loud", Status.ERROR, 1, 0.1, "e" * (1 << 20), True, "+" + "d" * (3 << 20), "")
    operation(store, "create", "vm-1", chain("before_vm_start", huge))
    (run,) = store.history()["operations"][0]["chains"][0]["runs"]
    for text in (run["stderr"], run["diff"]):
        assert len(text.encode()) <= 64 << 10 and "bytes cut by vmhooks" in text


def test_an_operation_carries_its_outcome_chains_and_runs(store: Store):
    operation(store, "create", "vm-1", chain("before_vm_start", OK, BAD), chain("after_vm_start"),
              result="libvirt: starting VM one: boom")  # fmt: skip
    (item,) = store.history()["operations"]
    assert item["operation"] == "create" and item["vm_name"] == "one" and item["caller"] == "test"
    assert item["result"] == "libvirt: starting VM one: boom" and item["hooks_run"] == 2 and item["hooks_failed"] == 1
    assert [c["point"] for c in item["chains"]] == ["before_vm_start", "after_vm_start"]
    assert [(r["script"], r["status"], r["stderr"]) for r in item["chains"][0]["runs"]] == [
        ("10_a", "ok", ""), ("20_b", "error", "it broke\n")
    ]  # fmt: skip


def test_a_run_says_whether_it_was_forked_from_the_warm_interpreter(store: Store):
    forked = OK._replace(name="10_py", fast_path=True)
    operation(store, "create", "vm-1", chain("before_vm_start", forked, OK))
    runs = store.history()["operations"][0]["chains"][0]["runs"]
    assert [(run["script"], run["fast_path"]) for run in runs] == [("10_py", True), ("10_a", False)]


def test_filters(store: Store):
    operation(store, "create", "vm-1", chain("before_vm_start", OK), when=100)
    operation(store, "pause", "vm-1", chain("before_vm_pause", BAD), when=200)
    operation(store, "create", "vm-2", chain("before_vm_start", OK), when=300, vm_name="two")
    operation(store, "destroy", "vm-2", when=400, result="no VM with id vm-2", vm_name="two")

    def names(**filters: object) -> list[tuple[str, str]]:
        return [(o["operation"], o["vm_id"]) for o in store.history(Filters(**filters))["operations"]]  # type: ignore[arg-type]

    assert names(vm_id="vm-2") == [("create", "vm-2"), ("destroy", "vm-2")]
    assert names(since=200, until=400) == [("pause", "vm-1"), ("create", "vm-2")]
    assert names(failed=True) == [("pause", "vm-1"), ("destroy", "vm-2")]
    assert names(point="before_vm_start") == [("create", "vm-1"), ("create", "vm-2")]
    only = store.history(Filters(point="before_vm_pause"))["operations"]
    assert [c["point"] for c in only[0]["chains"]] == ["before_vm_pause"]


def test_pages_cover_everything_once_newest_first(store: Store):
    ids = [operation(store, "pause", "vm-1", chain("before_vm_pause", OK), when=i) for i in range(25)]
    seen: list[int] = []
    before = None
    while True:
        page = store.history(Filters(before=before), limit=10)
        seen[:0] = [o["id"] for o in page["operations"]]
        assert [o["id"] for o in page["operations"]] == sorted(o["id"] for o in page["operations"])
        before = page["before"]
        if before is None:
            break
    assert seen == ids


def test_a_page_stops_at_1000_chains_and_at_8_mib_of_output(store: Store):
    many = operation(store, "create", "vm-1", *[chain("before_device_create", OK)] * 1200)
    for _ in range(3):
        operation(store, "pause", "vm-1", chain("before_vm_pause", OK))
    page = store.history()
    # The newest three fit; the one with 1200 chains would pass 1000 chains: next page.
    assert len(page["operations"]) == 3 and page["before"] == page["operations"][0]["id"]
    alone = store.history(Filters(before=page["before"]))["operations"]
    assert [o["id"] for o in alone] == [many] and len(alone[0]["chains"]) == 1000
    assert alone[0]["chains_omitted"] == 200

    loud = ScriptRun("10_loud", Status.OK, 0, 0.1, "x" * (64 << 10), False)
    for _ in range(200):  # 200 runs of 64 KiB: 12.5 MiB
        operation(store, "getStats", "vm-1", chain("after_get_vm_stats", loud))
    page = store.history(limit=1000)
    text = sum(len(r["stderr"]) for o in page["operations"] for c in o["chains"] for r in c["runs"])
    assert text <= history.PAGE_TEXT_BYTES and page["before"] is not None


def test_prune_by_age_size_and_polling(store: Store):
    old = operation(store, "create", "vm-1", chain("before_vm_start", OK), when=10)
    operation(store, "pause", "vm-1", chain("before_vm_pause", OK), when=20)
    assert store.prune(15).operations == 1
    assert old not in [o["id"] for o in store.history()["operations"]]

    for index in range(30):
        operation(store, "getStats", "vm-1", chain("after_get_vm_stats", OK), polled=True, when=100 + index)
    operation(store, "getStats", "vm-1", chain("after_get_vm_stats", BAD), polled=True, result="boom", when=200)
    pruned = store.prune_polled(keep=5)
    polled = [o for o in store.history(limit=1000)["operations"] if o["polled"]]
    assert pruned.operations == 25 and [o["time"] for o in polled] == [125, 126, 127, 128, 129, 200]

    loud = ScriptRun("10_loud", Status.OK, 0, 0.1, "x" * (60 << 10), False)
    for index in range(100):
        operation(store, "pause", "vm-1", chain("before_vm_pause", loud), when=300 + index)
    assert store.used_bytes() > 4 << 20
    newest = store.history(limit=1)["operations"][0]["id"]
    pruned = store.prune_to_size(2 << 20, in_progress_since=0)
    assert store.used_bytes() <= 2 << 20 and pruned.operations > 0
    left = [o["id"] for o in store.history(limit=1000)["operations"]]
    assert left[-1] == newest and left == sorted(left) and len(left) < 137
    assert store.counters()["pruned_operations"] == 1 + 25 + pruned.operations


def test_prune_to_size_keeps_operations_still_running(store: Store):
    loud = ScriptRun("10_loud", Status.OK, 0, 0.1, "x" * (60 << 10), False)
    running = store.begin_operation(OperationRecord(50, "migrate", "vm-1", "one"))
    store.add_chain(running, "migrate", "vm-1", chain("before_vm_migrate_source", loud))
    for index in range(60):
        operation(store, "pause", "vm-1", chain("before_vm_pause", loud), when=100 + index)
    store.prune_to_size(1 << 20, in_progress_since=40)
    assert running in [o["id"] for o in store.history(limit=1000)["operations"]]


def test_vms_know_gone_ones_by_name_with_their_last_operation(store: Store):
    operation(store, "create", "vm-1", when=1, vm_name="one")
    operation(store, "destroy", "vm-1", when=2, vm_name=None, result="no VM with id vm-1")
    operation(store, "getStats", "vm-1", chain("after_get_vm_stats", OK), when=3, polled=True)
    operation(store, "create", "vm-2", when=4, vm_name="two")
    assert [(v["vm_id"], v["vm_name"], v["last_operation"], v["last_result"], v["operations"])
            for v in store.history_vms()] == [
        ("vm-1", "one", "destroy", "no VM with id vm-1", 2),
        ("vm-2", "two", "create", "ok", 1),
    ]  # fmt: skip


def test_script_stats_over_a_window(store: Store):
    operation(store, "create", "vm-1", chain("before_vm_start", OK, BAD))
    operation(store, "create", "vm-2", chain("before_vm_start", OK))
    stats = {(s["point"], s["script"]): (s["runs"], s["failed"]) for s in store.script_stats()}
    assert stats == {("before_vm_start", "10_a"): (2, 0), ("before_vm_start", "20_b"): (1, 1)}
    assert store.script_stats(since=10**12) == []


def test_vms_say_whether_their_last_chain_failed_polled_ones_included(store: Store):
    operation(store, "pause", "vm-1", chain("after_vm_pause", OK, BAD))
    operation(store, "cont", "vm-1")  # no hook ran: the last chain is still pause's
    operation(store, "create", "vm-2", chain("before_vm_start", BAD))
    operation(store, "getStats", "vm-2", chain("after_get_vm_stats", OK), polled=True)
    rejected = ChainResult(get_point("before_vm_start"), (OK,), None, "", "output rejected: 10_a broke it", False)
    operation(store, "create", "vm-3", rejected, result="before_vm_start: output rejected")
    operation(store, "create", "vm-4")
    failed = {v["vm_id"]: (v["last_operation"], v["last_chain_failed"]) for v in store.history_vms()}
    assert failed == {
        "vm-1": ("cont", True), "vm-2": ("create", False), "vm-3": ("create", True), "vm-4": ("create", False),
    }  # fmt: skip


def test_script_stats_count_timeouts_and_take_nearest_rank_percentiles(store: Store):
    durations = [0.001 * n for n in range(1, 21)]  # 1 to 20 ms
    runs = [ScriptRun("10_a", Status.OK, 0, d, "", False) for d in durations]
    runs.append(ScriptRun("10_a", Status.TIMEOUT, None, 5.0, "", False))
    runs.append(ScriptRun("10_a", Status.REFUSED, None, 0.0, "", False))  # never ran: no duration
    for run in runs:
        operation(store, "pause", "vm-1", chain("before_vm_pause", run))
    (stats,) = store.script_stats()
    assert (stats["runs"], stats["failed"], stats["timeouts"]) == (22, 2, 1)
    # 21 runs that ran: the 11th and the 20th by duration (nearest rank).
    assert stats["p50_s"] == pytest.approx(0.011) and stats["p95_s"] == pytest.approx(0.020)
