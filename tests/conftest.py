"""Fixtures shared by every test module: a private hooks root and a way to
drop real hook scripts into it."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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


def process_dead(pid: int, within: float = 3.0) -> bool:
    """Gone, or a zombie waiting for a reaper (the container's init may not reap)."""
    end = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


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


class LinkedRoot(NamedTuple):
    hooks_dir: Path  # the hooks root as the admin gave it: a symlink
    holder: Path  # the directory that holds the symlink
    marks: Path  # 10_first, good_second or evil appear here as the scripts run


@pytest.fixture(params=["nobody-dir", "sticky-dir"])
def linked_root(request: pytest.FixtureRequest) -> Iterator[LinkedRoot]:
    """A hooks root reached through a symlink whose directory someone else
    can write (owned by nobody), or only add to (sticky, world-writable).

    The link leads to a root-owned tree whose first script, as nobody,
    re-points the link to nobody's own tree (20_second there marks `evil`)
    before the second script of the chain runs."""
    public = Path(tempfile.mkdtemp(prefix="vmhooks-link-"))
    os.chmod(public, 0o755)
    try:
        marks = public / "marks"
        marks.mkdir(mode=0o755)
        holder = public / "holder"
        holder.mkdir()
        if request.param == "nobody-dir":
            os.chown(holder, NOBODY, NOBODY)
            os.chmod(holder, 0o755)
        else:
            os.chmod(holder, 0o1777)
        link = holder / "hooksroot"
        repoint = (
            f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
            f"sh -c 'ln -s {public}/bad {holder}/new && mv -T {holder}/new {link}' 2>/dev/null\n"
        )
        for tree, scripts, owner in (
            ("good", {"10_first": f"{repoint}touch {marks}/first\n", "20_second": f"touch {marks}/good_second\n"}, 0),
            ("bad", {"20_second": f"touch {marks}/evil\n"}, NOBODY),
        ):
            point = public / tree / "before_vm_start"
            point.mkdir(parents=True)
            for directory in (point.parent, point):
                os.chmod(directory, 0o755)
                os.chown(directory, owner, owner)
            for name, body in scripts.items():
                (point / name).write_text(f"#!/bin/sh\n{body}")
                os.chmod(point / name, 0o755)
                os.chown(point / name, owner, owner)
        link.symlink_to(public / "good")
        yield LinkedRoot(link, holder, marks)
    finally:
        shutil.rmtree(public)
