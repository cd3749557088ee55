"""`vmhooks hooks points`: the table of points as a user reads it."""
from __future__ import annotations

import json
import subprocess

from agentproc import VMHOOKS

from vmhooks.points import POINTS


def test_json_is_the_point_table():
    done = subprocess.run([*VMHOOKS, "hooks", "points", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert list(listed) == list(POINTS)
    for name, point in POINTS.items():
        entry = listed[name]
        assert (entry["payload"], entry["aborts"], entry["output_used"], entry["scope"], tuple(entry["params"]),
                entry["extension"]) == (point.payload.value, point.aborts, point.output_used, point.scope.value,
                                        point.params, point.extension)  # fmt: skip
    assert listed["before_vm_start"]["aborts"] and listed["before_vm_start"]["output_used"]
    assert not listed["after_get_caps"]["aborts"] and listed["after_get_caps"]["output_used"]


def test_text_has_a_row_per_point_and_explains_its_columns():
    done = subprocess.run([*VMHOOKS, "hooks", "points"], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["POINT", "PAYLOAD", "SCOPE", "ON", "FAILURE", "OUTPUT", "EXTRA", "ENV"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1 : 1 + len(POINTS)]}
    assert list(rows) == list(POINTS)
    assert rows["before_vm_start"] == ["domain", "vm", "aborts", "used", "-"]
    assert rows["after_vm_set_ticket"] == ["domain", "vm", "goes", "on", "discarded", "userName", "userId"]
    assert rows["before_nic_hotplug"][:2] == ["device", "device"]
    assert "ON FAILURE: 'aborts' = a failing script stops the operation" in done.stdout
    assert rows["before_cloudinit_iso"][0] == "*" and "* = a vmhooks extension" in done.stdout
