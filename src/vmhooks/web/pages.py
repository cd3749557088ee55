"""What each page shows, as records the templates lay out: the VMs, a VM's
timeline (with the geometry of its Gantt-like strip), the hooks with their
last 24 hours, the host."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from vmhooks import __version__, catalogue
from vmhooks.agent import Agent
from vmhooks.catalogue import PropertyDecl
from vmhooks.errors import VmhooksError
from vmhooks.points import POINTS
from vmhooks.properties import parse_user_defined
from vmhooks.runner import Status
from vmhooks.web import source
from vmhooks.web.diffview import Row, side_by_side

DAY = 86400.0
PAGE_OPERATIONS = 50  # operations on one page of a timeline
STATUS_FILTERS = ("failed", *(str(status) for status in Status))
POINT_NAMES = tuple(sorted(POINTS))

# The strip's geometry, in SVG user units (pixels at 100 %).
LABEL_WIDTH = 210  # the point names on the left
ROW_HEIGHT = 22
AXIS_HEIGHT = 34  # operation names above, start times below
TARGET_WIDTH = 1000  # what the operations of one page should fill
MIN_SEGMENT = 44  # an operation is never narrower than this
GAP = 16  # the broken axis between two operations
MIN_BAR = 2


class Bar(NamedTuple):
    run: source.RunView
    x: float
    y: float
    width: float


class Segment(NamedTuple):
    operation: source.OperationView
    x: float
    width: float


class Strip(NamedTuple):
    points: tuple[str, ...]  # one row each, top to bottom
    segments: tuple[Segment, ...]
    bars: tuple[Bar, ...]
    width: float
    height: float
    row_height: int = ROW_HEIGHT
    axis_height: int = AXIS_HEIGHT
    label_width: int = LABEL_WIDTH


class Timeline(NamedTuple):
    vm: source.VmView | None
    vm_id: str
    operations: tuple[source.OperationView, ...]  # newest first
    strip: Strip
    points: tuple[str, ...]  # the point filter's choices
    point: str  # the filters in force ("" for all)
    status: str
    older: int | None  # ?before= of the next older page, None on the last one
    diffs: Mapping[str, list[Row]]  # run key -> side-by-side rows


def vms_page(agent: Agent) -> dict[str, Any]:
    return {"vms": source.vms(agent)}


def timeline_page(agent: Agent, vm_id: str, point: str, status: str, before: int | None) -> Timeline:
    page = source.operations(agent, vm_id, point or None, status == "failed", before, PAGE_OPERATIONS)
    shown = [_filtered(op, point, status) for op in page.operations]
    if status:
        shown = [op for op in shown if op.chains or (status == "failed" and op.state == "failed")]
    vm = next((view for view in source.vms(agent) if view.vm_id == vm_id), None)
    diffs = {run.key: side_by_side(run.diff) for op in shown for chain in op.chains for run in chain.runs if run.diff}
    return Timeline(vm, vm_id, tuple(reversed(shown)), strip(shown), POINT_NAMES, point, status, page.older, diffs)


def _filtered(operation: source.OperationView, point: str, status: str) -> source.OperationView:
    """Only the chains of `point` (the store already chose the operations
    that have one) and the runs of `status`."""
    if not point and not status:
        return operation
    chains = []
    for chain in operation.chains:
        if point and chain.point != point:
            continue
        runs = tuple(run for run in chain.runs if _status_matches(run, status))
        if runs or not status:
            chains.append(chain._replace(runs=runs))
    return operation._replace(chains=tuple(chains))


def _status_matches(run: source.RunView, wanted: str) -> bool:
    return not wanted or run.status == wanted or (wanted == "failed" and run.failed)


def strip(operations: Sequence[source.OperationView]) -> Strip:
    """Operations left to right (oldest first) on a broken time axis: time
    runs linearly inside an operation, the idle time between two is cut out.
    One row per point; each run a bar as wide as it took."""
    # Rows in the order the points first ran: the strip reads top-left to bottom-right.
    points = tuple(dict.fromkeys(chain.point for op in operations for chain in op.chains))
    rows = {point: index for index, point in enumerate(points)}
    busy = sum(max(op.ended - op.started, 0.0) for op in operations)
    scale = min(TARGET_WIDTH / busy, 20_000.0) if busy > 0 else 1.0  # units per second
    segments, bars = [], []
    x = float(LABEL_WIDTH)
    for op in operations:
        width = max((op.ended - op.started) * scale, MIN_SEGMENT)
        segments.append(Segment(op, x, width))
        for chain in op.chains:
            y = AXIS_HEIGHT + rows[chain.point] * ROW_HEIGHT + 3
            for run in chain.runs:
                offset = min(max(run.started - op.started, 0.0) * scale, width - MIN_BAR)
                bars.append(Bar(run, x + offset, y, max(run.duration_s * scale, MIN_BAR)))
        x += width + GAP
    return Strip(points, tuple(segments), tuple(bars), x, AXIS_HEIGHT + len(points) * ROW_HEIGHT + AXIS_HEIGHT // 2)


# -- hooks ---------------------------------------------------------------------


class HookRow(NamedTuple):
    point: str
    script: str
    checksum: str | None  # None: not installed any more (seen in the history only)
    hook: str  # the catalogue hook it belongs to, if any
    properties: tuple[PropertyDecl, ...]
    stats: source.ScriptStats | None


def hooks_page(agent: Agent) -> dict[str, Any]:
    hooks_dir = agent.settings.hooks_dir
    inventory = agent.hooks_inventory()
    problem = ""
    owners: dict[str, tuple[str, tuple[PropertyDecl, ...]]] = {}
    try:
        for name, record in catalogue.installed(hooks_dir).items():
            for target in record.files:
                owners[target] = (name, record.hook.properties)
    except VmhooksError as exc:
        problem = str(exc)
    stats = source.script_stats(agent, time.time() - DAY)
    rows = []
    for point, scripts in inventory.items():
        for script, facts in scripts.items():
            hook, decls = owners.get(f"{point}/{script}", ("", ()))
            rows.append(HookRow(point, script, facts.get("checksum"), hook, decls, stats.pop((point, script), None)))
    for (point, script), numbers in sorted(stats.items()):
        rows.append(HookRow(point, script, None, "", (), numbers))
    try:
        admin_rules = {name: rule.pattern for name, rule in parse_user_defined(agent.settings.properties).items()}
    except VmhooksError as exc:
        admin_rules, problem = {}, str(exc)
    return {"rows": rows, "hooks_dir": hooks_dir, "admin_rules": admin_rules, "problem": problem}


# -- host ----------------------------------------------------------------------


def host_page(agent: Agent) -> dict[str, Any]:
    facts: dict[str, Any] = {"libvirt_uri": agent.settings.libvirt_uri, "agent_version": __version__}
    facts.update(libvirt_version=None, hypervisor=None, hostname=None, libvirt_error=None)
    ctx = agent.context
    if ctx.connected:
        try:
            conn = ctx.conn
            facts["libvirt_version"] = source.libvirt_version(agent)
            facts["hypervisor"] = f"{conn.getType()} {source.version_text(conn.getVersion())}"
            facts["hostname"] = conn.getHostname()
        except Exception as exc:  # libvirt went away: say so, show the rest
            facts["libvirt_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    started = source.started(agent)
    facts["started"] = started
    facts["uptime_s"] = time.time() - started
    facts["history"] = source.history_size(agent)
    facts["history_days"] = agent.settings.history_days
    facts["history_max_bytes"] = int(agent.settings.history_max_mb * (1 << 20))
    facts["hooks_dir"] = agent.settings.hooks_dir
    facts["state_dir"] = agent.settings.state_dir
    facts["vms"] = len(agent.context.registry.all())
    return {"facts": facts}
