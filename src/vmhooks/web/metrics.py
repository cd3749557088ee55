"""The agent's Prometheus metrics, made with `prometheus_client` on a
registry of their own (two agents in one process never mix their counts).

`AgentMetrics` is an `AgentObserver`: the agent tells it of every recorded
chain and every operation's outcome; what is a state rather than an event
(VMs by status, the history's size, the agent's identity) is read at each
scrape by a collector."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from vmhooks import __version__, discovery
from vmhooks.agent import Agent
from vmhooks.agent.observers import OperationOutcome
from vmhooks.points import POINTS
from vmhooks.runner import ChainResult, Status
from vmhooks.web import source

# 1 ms to 60 s, the range the issue asks for: a fast Python hook takes a few
# ms, the default timeout is 60 s.
HOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OPERATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
VM_STATUSES = ("starting", "up", "paused", "hibernated", "migrating", "incoming", "down")
UNSAFE_FILE = "unsafe_file"  # refusal reasons
OUTPUT_REJECTED = "output_rejected"


class AgentMetrics:
    def __init__(self, agent: Agent) -> None:
        disable_created_metrics()  # no *_created series: half the text, nothing a scraper needs
        self.agent = agent
        self.registry = CollectorRegistry()
        registry = self.registry
        self.hook_runs = Counter(
            "vmhooks_hook_runs", "Hook scripts run (or refused as unsafe), by point, script and status.",
            ["point", "script", "status"], registry=registry,
        )  # fmt: skip
        self.hook_duration = Histogram(
            "vmhooks_hook_duration_seconds", "How long each hook script ran.",
            ["point", "script"], buckets=HOOK_BUCKETS, registry=registry,
        )  # fmt: skip
        self.hook_timeouts = Counter(
            "vmhooks_hook_timeouts", "Hook scripts killed at their timeout.", ["point", "script"], registry=registry
        )
        self.hook_refusals = Counter(
            "vmhooks_hook_refusals",
            "Hook scripts refused: an unsafe file (unsafe_file), or an output the guardrails refused (output_rejected).",
            ["point", "script", "reason"], registry=registry,
        )  # fmt: skip
        self.operations = Counter(
            "vmhooks_operations", "Operations asked of the agent, by name and result (ok, or the error's kind).",
            ["operation", "result"], registry=registry,
        )  # fmt: skip
        self.operation_duration = Histogram(
            "vmhooks_operation_duration_seconds", "How long each operation took, hooks and libvirt included.",
            ["operation"], buckets=OPERATION_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(StateCollector(agent))
        ProcessCollector(registry=registry)
        self._scripts: dict[tuple[str, str], ScriptSeries] = {}
        for point, script in installed_scripts(agent.settings.hooks_dir):
            self._series(point, script)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- AgentObserver --------------------------------------------------------

    def chain_recorded(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        point = result.point.name
        for run in result.scripts:
            series = self._series(point, run.name)
            series.runs[run.status].inc()
            if run.status is Status.REFUSED:
                self.hook_refusals.labels(point, run.name, UNSAFE_FILE).inc()
                continue  # it never ran: no duration
            series.duration.observe(run.duration_s)
            if run.status is Status.TIMEOUT:
                series.timeouts.inc()
        if result.rejected is not None:
            # The runner's rule: the last script to change the payload decides.
            deciding = [run.name for run in result.scripts if run.changed]
            self.hook_refusals.labels(point, deciding[-1] if deciding else "", OUTPUT_REJECTED).inc()

    def operation_finished(self, outcome: OperationOutcome) -> None:
        self.operations.labels(outcome.operation, outcome.result).inc()
        self.operation_duration.labels(outcome.operation).observe(outcome.duration_s)

    def _series(self, point: str, script: str) -> ScriptSeries:
        """A script's series, every one at 0 from the first sight (the start,
        for installed scripts), so that increase() sees its first failure: a
        series born at 1 has no increase. Kept, as looking them up by label
        costs more than counting."""
        series = self._scripts.get((point, script))
        if series is None:
            series = self._scripts[(point, script)] = ScriptSeries(
                {status: self.hook_runs.labels(point, script, str(status)) for status in Status},
                self.hook_duration.labels(point, script),
                self.hook_timeouts.labels(point, script),
            )
        return series


class ScriptSeries(NamedTuple):
    runs: dict[Status, Counter]
    duration: Histogram
    timeouts: Counter


def installed_scripts(hooks_dir: Path) -> Iterator[tuple[str, str]]:
    for point in POINTS:
        try:
            scripts = discovery.find_scripts(hooks_dir, point)
        except OSError:
            continue
        for script in scripts:
            yield point, script.name


class StateCollector(Collector):
    """What is read at each scrape: VMs by status, the history's size, who we are."""

    def __init__(self, agent: Agent) -> None:
        disable_created_metrics()  # no *_created series: half the text, nothing a scraper needs
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        info = {"version": __version__, "libvirt_uri": agent.settings.libvirt_uri}
        try:
            info["libvirt_version"] = source.libvirt_version(agent) or ""
        except Exception:  # libvirt went away: the other facts still stand
            info["libvirt_version"] = ""
        yield InfoMetricFamily("vmhooks_agent", "The agent: its version, libvirt URI and libvirt version.", value=info)
        counts = dict.fromkeys(VM_STATUSES, 0)
        for vm in agent.context.registry.all():
            counts[vm.status] = counts.get(vm.status, 0) + 1
        vms = GaugeMetricFamily("vmhooks_vms", "VMs the agent runs, by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            vms.add_metric([status], count)
        yield vms
        size = source.history_size(agent)
        yield GaugeMetricFamily(
            "vmhooks_history_database_bytes", "Size of the history database on disk (SQLite and its WAL).",
            value=size.file_bytes,
        )  # fmt: skip
        yield CounterMetricFamily(
            "vmhooks_history_write_failures", "Operations and chains the history could not record (a full disk...).",
            value=size.write_failures,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "vmhooks_agent_start_time_seconds", "When the agent started (epoch seconds).", value=source.started(agent)
        )

