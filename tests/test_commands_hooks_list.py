"""`vmhooks hooks list`: the inventory, as text and exactly as JSON."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vmhooks.cli import main
from vmhooks.discovery import inventory

MakeHook = Callable[..., Path]
VMHOOKS_BIN = Path(sys.executable).parent / "vmhooks"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tree(make_hook: MakeHook, hooks_dir: Path) -> dict[str, dict[str, dict[str, str]]]:
    a = make_hook("before_vm_start", "50_a", "echo a\n")
    b = make_hook("before_vm_start", "10_b", "echo b\n")
    c = make_hook("after_vm_destroy", "20_c", "print('c')\n", lang="python")
    make_hook("after_vm_destroy", "30_plain", "exit 0\n", mode=0o644)
    make_hook("after_vm_pause", ".hidden", "exit 0\n")
    (hooks_dir / "after_vm_cont").mkdir()
    return {
        "before_vm_start": {"10_b": {"checksum": sha(b)}, "50_a": {"checksum": sha(a)}},
        "after_vm_destroy": {"20_c": {"checksum": sha(c)}},
    }


def list_json(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> object:
    assert main(["hooks", "list", "--json", "--hooks-dir", str(hooks_dir)]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_is_exactly_the_inventory(
    tree: dict[str, object], hooks_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = list_json(hooks_dir, capsys)
    assert found == tree
    assert found == inventory(hooks_dir)


def test_json_of_an_empty_tree(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert list_json(hooks_dir, capsys) == {}


def test_a_missing_tree_is_a_usage_error_also_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["hooks", "list", "--hooks-dir", str(missing)]) == 2
    assert capsys.readouterr().err == f"vmhooks: hooks directory '{missing}' does not exist\n"
    assert main(["hooks", "list", "--json", "--hooks-dir", str(missing)]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": {"code": 3, "message": f"hooks directory '{missing}' does not exist"}
    }


def test_text(tree: dict[str, dict[str, dict[str, str]]], hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "before_vm_start" in lines and "after_vm_destroy" in lines
    row = next(line for line in lines if line.strip().startswith("10_b"))
    assert f"sha256:{tree['before_vm_start']['10_b']['checksum'][:16]}" in row
    text = "\n".join(lines)
    assert "30_plain" not in text and ".hidden" not in text and "after_vm_cont" not in text
    # scripts under their point, in run order
    start = lines.index("before_vm_start")
    assert lines[start + 1].strip().startswith("10_b") and lines[start + 2].strip().startswith("50_a")


def test_text_of_an_empty_tree(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"no hook scripts under {hooks_dir}"


def test_hooks_dir_from_the_environment(
    tree: dict[str, object], hooks_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMHOOKS_HOOKS_DIR", str(hooks_dir))
    assert main(["hooks", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == tree


def test_checksum_follows_content(
    make_hook: MakeHook, hooks_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_hook("before_vm_start", "10_x", "echo one\n")
    first = list_json(hooks_dir, capsys)
    path.write_text("#!/bin/sh\necho two\n")
    second = list_json(hooks_dir, capsys)
    assert first != second
    assert second == {"before_vm_start": {"10_x": {"checksum": sha(path)}}}


@pytest.mark.skipif(not VMHOOKS_BIN.exists(), reason="the vmhooks console script is not installed")
def test_real_command(tree: dict[str, object], hooks_dir: Path) -> None:
    env = dict(os.environ, VMHOOKS_HOOKS_DIR=str(hooks_dir))
    done = subprocess.run(
        [str(VMHOOKS_BIN), "hooks", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == tree
