"""`vmhooks demo`: the lifecycle on the embedded test driver, and what it leaves."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from agentproc import VMHOOKS


def test_the_demo_runs_the_lifecycle_and_leaves_nothing_it_points_to():
    demo = subprocess.run([*VMHOOKS, "demo"], capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    sections = re.findall(r"^== (\S+)", demo.stdout, re.M)
    assert sections[0] == "start" and sections[-1] == "destroy"
    removed = Path(re.search(r"^cleaned up: (.+)$", demo.stdout, re.M)[1])  # type: ignore[index]
    assert not removed.exists()
    assert "--state-dir" not in demo.stdout  # no command that would read what is gone
    assert "'vmhooks demo --keep' keeps it" in demo.stdout
