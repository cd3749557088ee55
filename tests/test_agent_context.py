"""agent/context: the directories and the database the agent starts on,
refused in one line (and with the exit status systemd needs) when unfit."""
from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest
from agentproc import AgentProcess

from vmhooks.errors import CorruptStateError

REPO = Path(__file__).resolve().parent.parent


def serve(tmp_path: Path, hooks_dir: Path) -> subprocess.CompletedProcess[str]:
    """`vmhooks serve` that must exit at once."""
    process = AgentProcess(tmp_path / "agent", hooks_dir)
    return subprocess.run(process.command(), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "which, mode, told",
    [
        ("state", 0o755, "can be read by group or others (mode 0755): chmod 700 "),
        ("state", 0o704, "can be read by group or others (mode 0704): chmod 700 "),
        ("state", 0o720, "can be written by group or others (mode 0720): chmod 700 "),
        ("run", 0o750, "can be read by group or others (mode 0750): chmod 700 "),
        ("run", 0o777, "can be read and written by group or others (mode 0777): chmod 700 "),
    ],
)
def test_a_directory_others_can_read_or_write_is_refused(tmp_path, hooks_dir, which, mode, told):
    directory = tmp_path / "agent" / which
    directory.mkdir(parents=True)
    os.chmod(directory, mode)
    result = serve(tmp_path, hooks_dir)
    assert result.returncode == 2
    assert result.stderr == f"vmhooks: {directory} {told}{directory}\n"
    assert sorted(os.listdir(directory)) == []  # nothing written there


def test_a_corrupt_database_stops_the_agent_with_ex_config(tmp_path, hooks_dir):
    state = tmp_path / "agent" / "state"
    state.mkdir(parents=True, mode=0o700)
    database = state / "vmhooks.db"
    garbage = os.urandom(1 << 20)
    database.write_bytes(garbage)
    os.chmod(database, 0o644)
    stat_before = database.stat()
    result = serve(tmp_path, hooks_dir)
    assert result.returncode == CorruptStateError.exit_status == 78
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(database) in result.stderr and f"mv {database} {database}.broken" in result.stderr
    # Left as found, for forensics: same bytes, same mode and times, nothing beside it.
    assert database.read_bytes() == garbage and sorted(os.listdir(state)) == ["vmhooks.db"]
    stat_after = database.stat()
    assert (stat_after.st_mode, stat_after.st_mtime_ns, stat_after.st_ctime_ns) == (
        stat_before.st_mode, stat_before.st_mtime_ns, stat_before.st_ctime_ns)  # fmt: skip


def test_systemd_does_not_restart_an_agent_that_exits_ex_config():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "contrib" / "vmhooks.service")
    service = unit["Service"]
    assert str(CorruptStateError.exit_status) in service["RestartPreventExitStatus"].split()
    # The directories systemd makes must pass the agent's own check.
    assert int(service["RuntimeDirectoryMode"], 8) & 0o066 == 0
    assert int(service["StateDirectoryMode"], 8) & 0o066 == 0
