"""Human forms of the agent's reports in text output: nested fields as
dotted names, times in ISO 8601, durations in human units. Generic by field
name, so stats with other fields (VDSM's, or a hook's additions) read as
well as ours."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

# A numeric field is a time or a duration when its name says so.
TIME_WORDS = ("time", "elapsed", "duration", "uptime", "latency")
# ... and a duration, never a point in time, when its name says that.
DURATION_WORDS = ("elapsed", "duration", "uptime", "latency", "cpu")
UNIT_SUFFIXES = (("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3))
VDSM_TIME = "%Y-%m-%dT%H:%M:%S GMT"
EPOCH_FLOOR = 1e9  # seconds since 1970 from September 2001 on: a point in time


def fields(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, scalar) pairs of a nested report, in name order."""
    if isinstance(value, dict):
        if not value and prefix:
            return [(prefix, None)]  # shown as '-': the field is there, empty
        pairs = []
        for key in sorted(value, key=str):
            pairs += fields(value[key], f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return [pair for index, item in enumerate(value) for pair in fields(item, f"{prefix}[{index}]")]
    return [(prefix, value)]


def human(name: str, value: Any) -> str:
    """`value` of the field `name` as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(human(name, item) for item in value) or "-"
    key = name.rsplit(".", 1)[-1].lower()
    if isinstance(value, str) and any(word in key for word in ("time", "date")):
        moment = _vdsm_time(value)
        if moment is not None:
            return moment.astimezone().isoformat(timespec="seconds")
    number = _number(value)
    if number is None or not any(word in key for word in TIME_WORDS):
        return str(value)
    scale = next((factor for suffix, factor in UNIT_SUFFIXES if key.endswith(suffix)), 1.0)
    seconds = number * scale
    if scale == 1.0 and seconds >= EPOCH_FLOOR and not any(word in key for word in DURATION_WORDS):
        return iso_time(seconds)
    return duration(seconds)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """0 s, 250 us, 12 ms, 3.4 s, 5m 02s, 2h 07m, 3d 04h."""
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds == 0:
        return "0 s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def _vdsm_time(text: str) -> datetime | None:
    """VDSM's `dateTime` ('2026-12-02T16:36:08 GMT'), or an ISO 8601 time."""
    for form in (VDSM_TIME, None):
        try:
            moment = datetime.strptime(text, form) if form else datetime.fromisoformat(text)
        except ValueError:
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)  # VDSM reports some numbers as strings
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def field_rows(report: Any) -> list[list[object]]:
    """FIELD/VALUE rows of a report, for common.table."""
    return [[name, human(name, value)] for name, value in fields(report)]
