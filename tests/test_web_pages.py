"""The timeline's strip: operations on a broken time axis, one row per
point, each run a bar as wide as it took."""
from __future__ import annotations

import pytest

from vmhooks.web import pages
from vmhooks.web.source import ChainView, OperationView, RunView


def run(chain: int, point: str, script: str, started: float, duration: float, status: str = "ok") -> RunView:
    return RunView(f"run-{chain}-{script}", chain, "op", point, script, status, 0, started, duration, "", False, "", "")


def chain(chain_id: int, point: str, *runs: RunView) -> ChainView:
    started = min(r.started for r in runs)
    ended = max(r.started + r.duration_s for r in runs)
    return ChainView(chain_id, "op", point, started, ended, False, None, False, (), runs)


def operation(name: str, *chains: ChainView) -> OperationView:
    failed = sum(run.failed for c in chains for run in c.runs)
    runs = sum(len(c.runs) for c in chains)
    started, ended = chains[0].started, max(c.ended for c in chains)
    return OperationView(1, name, "test", started, ended, "ok", None, None, runs, failed, chains)


def test_bars_are_as_wide_as_the_runs_took_and_placed_in_time():
    start = operation(
        "create",
        chain(1, "before_vm_start", run(1, "before_vm_start", "a", 100.0, 0.010), run(1, "before_vm_start", "b", 100.010, 0.030)),
        chain(2, "after_vm_start", run(2, "after_vm_start", "a", 100.060, 0.020)),
    )
    pause = operation("pause", chain(3, "before_vm_pause", run(3, "before_vm_pause", "a", 5000.0, 0.020)))
    strip = pages.strip([start, pause])
    assert strip.points == ("before_vm_start", "after_vm_start", "before_vm_pause")
    bars = {(bar.run.point, bar.run.script): bar for bar in strip.bars}
    scale = bars[("before_vm_start", "a")].width / 0.010
    assert bars[("before_vm_start", "b")].width == pytest.approx(0.030 * scale)
    assert bars[("after_vm_start", "a")].width == pytest.approx(0.020 * scale)
    # Time runs linearly inside an operation...
    assert bars[("before_vm_start", "b")].x - bars[("before_vm_start", "a")].x == pytest.approx(0.010 * scale)
    assert bars[("after_vm_start", "a")].x - bars[("before_vm_start", "a")].x == pytest.approx(0.060 * scale)
    # ...and the idle hours between two operations are cut to a small gap.
    first, second = strip.segments
    assert second.x - (first.x + first.width) == pages.GAP
    assert bars[("before_vm_pause", "a")].x == pytest.approx(second.x)
    # One row per point, top to bottom.
    rows = {bar.run.point: bar.y for bar in strip.bars}
    assert rows["before_vm_start"] < rows["after_vm_start"] < rows["before_vm_pause"]
    assert strip.width == pytest.approx(second.x + second.width + pages.GAP)


def test_a_short_operation_still_shows_and_a_tiny_run_stays_visible():
    long = operation("migrate", chain(1, "before_vm_migrate_source", run(1, "before_vm_migrate_source", "a", 0.0, 50.0)))
    short = operation("pause", chain(2, "before_vm_pause", run(2, "before_vm_pause", "a", 100.0, 0.0001)))
    strip = pages.strip([long, short])
    assert strip.segments[1].width == pages.MIN_SEGMENT
    tiny = next(bar for bar in strip.bars if bar.run.point == "before_vm_pause")
    assert tiny.width == pages.MIN_BAR
    assert strip.segments[0].width == pytest.approx(pages.TARGET_WIDTH, rel=0.01)


def test_filters_keep_only_the_matching_runs():
    op = operation(
        "pause",
        chain(1, "before_vm_pause", run(1, "before_vm_pause", "a", 0.0, 0.1)),
        chain(2, "after_vm_pause", run(2, "after_vm_pause", "a", 1.0, 0.1), run(2, "after_vm_pause", "b", 1.1, 0.1, "timeout")),
    )
    by_point = pages._filtered(op, "after_vm_pause", "")
    assert [c.point for c in by_point.chains] == ["after_vm_pause"] and len(by_point.chains[0].runs) == 2
    failed = pages._filtered(op, "", "failed")
    assert [(c.point, [r.script for r in c.runs]) for c in failed.chains] == [("after_vm_pause", ["b"])]
    assert pages._filtered(op, "", "error").chains == ()
    assert pages._filtered(op, "", "") is op


def test_an_empty_timeline_has_no_bars():
    strip = pages.strip([])
    assert strip.bars == () and strip.points == ()
