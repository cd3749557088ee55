"""The `vmhooks` command as a user types it: one-line errors (JSON with
--json), the same error for the same mistake in every subcommand."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from agentproc import VMHOOKS


def vmhooks(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMHOOKS, *args], capture_output=True, text=True, timeout=60, input=stdin)


def test_a_command_line_mistake_is_one_line_naming_the_help():
    done = vmhooks("vm", "pause")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("vmhooks: vm pause: the following arguments are required: VM"
                           " (see 'vmhooks vm pause --help')\n")  # fmt: skip
    unknown = vmhooks("hooks", "lint")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "invalid choice: 'lint'" in unknown.stderr


def test_a_command_line_mistake_is_json_with_json():
    done = vmhooks("host", "stats", "--json", "--bogus")
    assert done.returncode == 2 and done.stderr == ""
    error = json.loads(done.stdout)["error"]
    assert error["code"] == 3 and "unrecognized arguments: --bogus" in error["message"]


@pytest.mark.parametrize("command", [["hooks", "run", "before_vm_start", "--xml", "-"], ["hooks", "list"], ["hooks", "check"]])
def test_a_missing_hooks_dir_is_the_same_error_everywhere(tmp_path: Path, command: list[str]):
    missing = tmp_path / "typo"
    done = vmhooks(*command, "--hooks-dir", str(missing), stdin="<domain/>")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"vmhooks: hooks directory '{missing}' does not exist\n")


def test_hooks_list_json_error_for_a_missing_dir(tmp_path: Path):
    done = vmhooks("hooks", "list", "--json", "--hooks-dir", str(tmp_path / "typo"))
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"] == f"hooks directory '{tmp_path / 'typo'}' does not exist"


def test_hooks_run_with_output_json_reports_errors_as_json(hooks_dir: Path):
    done = vmhooks("hooks", "run", "before_vm_strat", "--hooks-dir", str(hooks_dir), "--output", "json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"] == (
        "unknown hook point 'before_vm_strat' (did you mean 'before_vm_start'? 'vmhooks hooks points' lists them all)"
    )


@pytest.mark.parametrize(
    ("point", "suggestion"),
    [("after_vm_destory", "'after_vm_destroy'"), ("Before_Vm_Pause", "'before_vm_pause'"),
     ("before_vm_migrate", "'before_vm_migrate_source' or 'before_vm_migrate_destination'")],
)  # fmt: skip
def test_an_unknown_point_suggests_the_nearest(hooks_dir: Path, point: str, suggestion: str):
    done = vmhooks("hooks", "run", point, "--hooks-dir", str(hooks_dir))
    assert done.returncode == 2 and f"did you mean {suggestion}?" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prop", "flag"], "--prop 'flag': expected NAME=VALUE (NAME= for an empty value)"),
        (["--prop", "a=1", "--prop", "a=1"], "--prop 'a' is given twice"),
        (["--param", "userName"], "--param 'userName': expected NAME=VALUE (NAME= for an empty value)"),
        (["--param", "a=1", "--param", "a=2"], "--param 'a' is given twice"),
    ],
)
def test_props_and_params_read_the_same_in_hooks_run(hooks_dir: Path, args: list[str], message: str):
    done = vmhooks("hooks", "run", "before_vm_start", "--hooks-dir", str(hooks_dir), "--xml", "-", *args,
                   stdin="<domain><name>a</name></domain>")  # fmt: skip
    assert (done.returncode, done.stderr) == (2, f"vmhooks: {message}\n")
