"""`/metrics`, read back with prometheus_client's own parser: the counters
move by exactly the runs and operations made."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from webconsole import Web, recorded_runs, start_web, stop_web, web  # noqa: F401 (fixture)

from vmhooks.errors import HookError
from vmhooks.web.metrics import HOOK_BUCKETS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(web: Web, accept: str | None = None) -> Samples:
    answer = web.get("/metrics", headers={"Accept": accept} if accept else None)
    assert answer.status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def values(samples: Samples, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        labels: value
        for (sample, labels), value in samples.items()
        if sample == name and all(dict(labels).get(k) == v for k, v in match.items())
    }


def delta(before: Samples, after: Samples, name: str) -> Counter[tuple[tuple[str, str], ...]]:
    moved: Counter[tuple[tuple[str, str], ...]] = Counter()
    for key, value in after.items():
        if key[0] == name and value != before.get(key, 0.0):
            moved[key[1]] = value - before.get(key, 0.0)
    return moved


def test_hook_run_counters_move_by_exactly_the_runs_in_the_history(web, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    make_hook("after_vm_start", "20_b", "echo warn >&2; exit 1\n")  # after: a failure aborts nothing
    make_hook("after_vm_pause", "10_c", "exit 0\n")
    make_hook("before_vm_cont", "10_d", "exit 2\n")  # stops the chain and aborts cont
    before = scrape(web)
    agent = web.agent
    vm_id = agent.create(seed_xml)["vmId"]
    agent.pause(vm_id)
    with pytest.raises(HookError):
        agent.cont(vm_id)
    agent.getStats(vm_id)  # no hook there: an operation, no run
    after = scrape(web)

    made = Counter(
        (("point", run["point"]), ("script", run["script"]), ("status", run["status"]))
        for run in recorded_runs(agent.history(vm_id))
    )
    assert sum(made.values()) == 4
    assert delta(before, after, "vmhooks_hook_runs_total") == made
    durations = delta(before, after, "vmhooks_hook_duration_seconds_count")
    assert sum(durations.values()) == 4 and durations[(("point", "after_vm_start"), ("script", "20_b"))] == 1

    operations = delta(before, after, "vmhooks_operations_total")
    assert operations == {
        (("operation", "create"), ("result", "ok")): 1,
        (("operation", "pause"), ("result", "ok")): 1,
        (("operation", "cont"), ("result", "hook_error")): 1,
        (("operation", "getStats"), ("result", "ok")): 1,
    }
    latency = delta(before, after, "vmhooks_operation_duration_seconds_count")
    assert sum(latency.values()) == 4

    # A second scrape, nothing done between: nothing moves.
    assert delta(after, scrape(web), "vmhooks_hook_runs_total") == {}


def test_timeouts_and_refusals_are_counted(tmp_path, hooks_dir, make_hook, seed_xml):
    web = start_web(tmp_path, hooks_dir, hook_timeouts={"before_vm_pause": 0.3})
    try:
        make_hook("before_vm_pause", "10_hang", "sleep 30\n")
        make_hook("before_vm_start", "50_break", "echo '<domain><name>other</name></domain>' > \"$_hook_domxml\"\n")
        unsafe = make_hook("after_vm_destroy", "10_unsafe", "exit 0\n")
        os.chmod(unsafe, 0o777)
        before = scrape(web)
        with pytest.raises(HookError, match="output rejected"):
            web.agent.create(seed_xml)
        os.unlink(hooks_dir / "before_vm_start" / "50_break")
        vm_id = web.agent.create(seed_xml)["vmId"]
        with pytest.raises(HookError, match="timed out|timeout"):
            web.agent.pause(vm_id)
        web.agent.destroy(vm_id)
        after = scrape(web)
    finally:
        stop_web(web)
    assert delta(before, after, "vmhooks_hook_timeouts_total") == {
        (("point", "before_vm_pause"), ("script", "10_hang")): 1
    }
    assert delta(before, after, "vmhooks_hook_refusals_total") == {
        (("point", "before_vm_start"), ("reason", "output_rejected"), ("script", "50_break")): 1,
        (("point", "after_vm_destroy"), ("reason", "unsafe_file"), ("script", "10_unsafe")): 1,
    }
    runs = delta(before, after, "vmhooks_hook_runs_total")
    assert runs[(("point", "before_vm_pause"), ("script", "10_hang"), ("status", "timeout"))] == 1
    assert runs[(("point", "after_vm_destroy"), ("script", "10_unsafe"), ("status", "refused"))] == 1
    durations = delta(before, after, "vmhooks_hook_duration_seconds_count")
    assert (("point", "after_vm_destroy"), ("script", "10_unsafe")) not in durations  # it never ran


def test_installed_scripts_have_zeroed_series_from_the_start(tmp_path, hooks_dir, make_hook):
    make_hook("before_vm_migrate_source", "50_cantmigrate", "exit 0\n")
    web = start_web(tmp_path, hooks_dir)
    try:
        samples = scrape(web)
    finally:
        stop_web(web)
    runs = values(samples, "vmhooks_hook_runs_total", point="before_vm_migrate_source", script="50_cantmigrate")
    statuses = {dict(labels)["status"] for labels in runs}
    assert statuses == {"ok", "error", "stopped-chain", "timeout", "signal", "refused"}
    assert set(runs.values()) == {0.0}
    assert values(samples, "vmhooks_hook_timeouts_total", script="50_cantmigrate") == {
        (("point", "before_vm_migrate_source"), ("script", "50_cantmigrate")): 0.0
    }


def test_duration_buckets_run_from_1ms_to_60s(web, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    web.agent.create(seed_xml)
    buckets = values(scrape(web), "vmhooks_hook_duration_seconds_bucket", script="10_a")
    bounds = sorted(float(dict(labels)["le"]) for labels in buckets)
    assert bounds == [*HOOK_BUCKETS, float("inf")]
    assert bounds[0] == 0.001 and bounds[-2] == 60.0
    assert buckets[(("le", "+Inf"), ("point", "before_vm_start"), ("script", "10_a"))] == 1.0


def test_states_vms_history_size_and_agent_info(web, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    vm_id = web.agent.create(seed_xml)["vmId"]
    web.agent.pause(vm_id)
    samples = scrape(web)
    vms = {dict(labels)["status"]: value for labels, value in values(samples, "vmhooks_vms").items()}
    assert vms["paused"] == 1 and vms["up"] == 0 and sum(vms.values()) == 1
    size = samples[("vmhooks_history_database_bytes", ())]
    database = web.agent.context.store.path
    assert size >= os.path.getsize(database) > 0
    (info,) = values(samples, "vmhooks_agent_info")
    labels = dict(info)
    assert labels["libvirt_uri"] == "test:///default"
    from vmhooks import __version__

    assert labels["version"] == __version__ and labels["libvirt_version"].count(".") == 2
    assert samples[("vmhooks_agent_start_time_seconds", ())] == pytest.approx(web.agent.context.recorder.started)
    assert samples[("vmhooks_history_write_failures_total", ())] == 0
    assert samples[("process_open_fds", ())] > 0


def test_openmetrics_when_the_scraper_asks(web):
    answer = web.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
    plain = web.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "vmhooks_agent_info" in plain.text and "_created" not in plain.text


def test_a_closed_console_stops_counting(tmp_path, hooks_dir, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    web = start_web(tmp_path, hooks_dir)
    metrics = web.console.metrics
    web.console.close()
    try:
        web.agent.create(seed_xml)
    finally:
        web.agent.stop()
    counted = metrics.hook_runs.labels("before_vm_start", "10_a", "ok")._value.get()
    assert counted == 0


def test_docs_list_every_metric_and_the_rules_use_real_ones(web, make_hook, seed_xml):
    make_hook("before_vm_start", "10_a", "exit 0\n")
    web.agent.create(seed_xml)
    text = web.get("/metrics").text
    exposed = {family.name for family in text_string_to_metric_families(text) if family.name.startswith("vmhooks_")}
    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    table = set(re.findall(r"^\| `(vmhooks_[a-z_]+)`", doc, re.M))
    series = {name.removesuffix("_total") for name in table}
    assert series == exposed
    examples = "".join(re.findall(r"```yaml\n(.*?)```", doc, re.S))
    used = set(re.findall(r"vmhooks_[a-z_]+", examples)) - {"vmhooks"}
    assert used and used <= table
