"""Fixtures shared by every test module: a private hooks root and a way to
drop real hook scripts into it."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO.parent / "shared" / "spec"
SEED_XML_PATH = Path(__file__).resolve().parent / "data" / "seed-domain.xml"
# Python hooks run under the test interpreter, as they would under the agent's.
PYTHON_SHEBANG = f"#!{sys.executable}"

MakeHook = Callable[..., Path]
NOBODY = 65534


def as_nobody(function: Callable[[], Any]) -> Any:
    """Run `function` in a forked child as uid/gid 65534; its JSON result.

    Root reads any file whatever its mode, and never needs sudo: some
    behaviour can only be seen as another user."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, json.dumps(function()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """Where hooks leave evidence of what they saw."""
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture
def seed_xml() -> str:
    return SEED_XML_PATH.read_text()


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hooks"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    return root


@pytest.fixture
def make_hook(hooks_dir: Path) -> MakeHook:
    """make_hook(point, name, body, *, lang="sh"|"python", mode=0o755) -> path.

    `body` is dedented; a shebang for `lang` is put in front of it."""

    def make(point: str, name: str, body: str, *, lang: str = "sh", mode: int = 0o755) -> Path:
        directory = hooks_dir / point
        directory.mkdir(mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)
        shebang = PYTHON_SHEBANG if lang == "python" else "#!/bin/sh"
        path = directory / name
        path.write_text(f"{shebang}\n{textwrap.dedent(body).lstrip()}")
        os.chmod(path, mode)
        return path

    return make


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path):
    """An agent in-process on libvirt's test driver, started and stopped."""
    from vmhooks.agent import Agent
    from vmhooks.config import AgentSettings

    settings = AgentSettings(
        libvirt_uri="test:///default",
        hooks_dir=hooks_dir,
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        hook_timeout=10,
    )
    instance = Agent(settings)
    instance.start()
    yield instance
    instance.stop()
