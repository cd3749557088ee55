"""Fixtures shared by every test module: a private hooks root and a way to
drop real hook scripts into it."""
from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO.parent / "shared" / "spec"
SEED_XML_PATH = Path(__file__).resolve().parent / "data" / "seed-domain.xml"
# Python hooks run under the test interpreter, as they would under the agent's.
PYTHON_SHEBANG = f"#!{sys.executable}"

MakeHook = Callable[..., Path]


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
