"""commands.display: reports in human units, by field name, whatever the fields."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from vmhooks.commands.display import duration, field_rows, fields, human


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (0.0000004, "0 us"), (0.000250, "250 us"), (0.012, "12 ms"), (3.44, "3.4 s"), (302, "5m 02s"),
     (7620, "2h 07m"), (273600, "3d 04h"), (-2, "-2.0 s")],
)  # fmt: skip
def test_duration(seconds: float, text: str):
    assert duration(seconds) == text


def test_points_in_time_become_iso_8601():
    epoch = 1_780_000_000.5
    expected = datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    assert human("time", epoch) == expected
    assert human("bootTime", "1780000000") == expected  # VDSM sends some numbers as strings
    utc = datetime(2026, 12, 2, 16, 36, 8, tzinfo=timezone.utc).astimezone().isoformat(timespec="seconds")
    assert human("dateTime", "2026-12-02T16:36:08 GMT") == utc  # VDSM's own form
    assert human("dateTime", "2026-12-02T16:36:08+00:00") == utc
    assert human("dateTime", "yesterday") == "yesterday"


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [("cpuTimeNs", 2_500_000_000, "2.5 s"), ("elapsedTime", 1_780_000_000, "20601d 20h"),
     ("elapsedTime", "75", "1m 15s"), ("latencyMs", 12, "12 ms"), ("uptime", 90061, "1d 01h"),
     ("vmCount", 3, "3"), ("cpuModel", "i686", "i686"), ("timeout", "soon", "soon"),
     ("time", float("nan"), "nan"), ("ok", True, "yes"), ("gone", None, "-"), ("list", [1, 2], "1, 2")],
)  # fmt: skip
def test_values_by_field_name(name: str, value: object, text: str):
    assert human(name, value) == text


def test_nested_reports_flatten_to_dotted_names():
    report = {"b": 1, "a": {"y": [1, 2], "x": [{"k": "v"}]}, "network": {"eth0": {"rxRate": 0.1}}, "disks": {}}
    assert fields(report) == [("a.x[0].k", "v"), ("a.y", [1, 2]), ("b", 1), ("disks", None),
                              ("network.eth0.rxRate", 0.1)]  # fmt: skip
    assert field_rows({"vm": {"cpuTimeNs": 1000}}) == [["vm.cpuTimeNs", "1 us"]]
