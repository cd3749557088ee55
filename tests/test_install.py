"""`make install` / `make uninstall` (scripts/install) into a DESTDIR, as a
packager stages it, then run from PREFIX as the unit runs it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(600)


def make(target: str, destdir: Path, prefix: Path, sysconfdir: Path) -> str:
    env = {**os.environ, "DESTDIR": str(destdir), "PREFIX": str(prefix), "SYSCONFDIR": str(sysconfdir),
           "GENERATED": str(destdir.parent / "generated")}  # fmt: skip
    done = subprocess.run(["make", "-s", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()}


def test_install_stages_everything_under_destdir_and_uninstall_removes_it(tmp_path: Path):
    stage, prefix, etc = tmp_path / "stage", tmp_path / "opt" / "vmhooks", tmp_path / "etc"
    make("install", stage, prefix, etc)
    staged = stage / prefix.relative_to("/")
    expected = {
        "bin/vmhooks", "lib/systemd/system/vmhooks.service", "share/man/man1/vmhooks.1",
        "share/bash-completion/completions/vmhooks", "share/zsh/site-functions/_vmhooks",
        "share/doc/vmhooks/vmhooks.toml", "share/doc/vmhooks/README.md", "share/doc/vmhooks/admin.md",
    }  # fmt: skip
    assert expected <= files_under(staged)
    assert (staged / "lib/vmhooks/pyvenv.cfg").is_file()
    config = stage / etc.relative_to("/") / "vmhooks/vmhooks.toml"
    assert config.read_text() == (REPO / "contrib/vmhooks.toml").read_text()

    # The unit runs the wrapper, which runs the virtualenv's python, all under PREFIX.
    unit = (staged / "lib/systemd/system/vmhooks.service").read_text()
    assert f"ExecStart={prefix}/bin/vmhooks serve --config /etc/vmhooks/vmhooks.toml" in unit
    assert f"Documentation=man:vmhooks(1) file://{prefix}/share/doc/vmhooks/README.md" in unit
    assert (staged / "bin/vmhooks").read_text() == f'#!/bin/sh\nexec {prefix}/lib/vmhooks/bin/python -I -m vmhooks.cli "$@"\n'
    # Nothing that is installed names the staging directory.
    leaked = subprocess.run(["grep", "-rl", str(stage), str(stage)], capture_output=True, text=True)
    assert leaked.stdout == ""
    # Only the agent and its runtime dependency: no pip, no setuptools.
    site = next((staged / "lib/vmhooks/lib").glob("python3*/site-packages"))
    assert not (site / "pip").exists() and not (site / "setuptools").exists()
    assert (site / "vmhooks").is_dir() and (site / "libvirt.py").is_file()

    # Moved to PREFIX (a symlink here, as a package manager would copy it), it runs.
    prefix.parent.mkdir(parents=True)
    prefix.symlink_to(staged)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    version = subprocess.run([str(prefix / "bin/vmhooks"), "--version"], capture_output=True, text=True, env=env, cwd="/")
    assert version.returncode == 0 and version.stdout.startswith("vmhooks ")
    points = subprocess.run([str(prefix / "bin/vmhooks"), "hooks", "points"], capture_output=True, text=True, env=env)
    assert points.returncode == 0 and "before_vm_start" in points.stdout
    agent = subprocess.run([str(prefix / "lib/vmhooks/bin/python"), "-I", "-c", "import libvirt, vmhooks.agent; print(libvirt.__file__)"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert agent.returncode == 0 and agent.stdout.startswith(str(prefix / "lib/vmhooks/lib")), agent.stderr
    man = subprocess.run(["man", "-l", str(prefix / "share/man/man1/vmhooks.1")], capture_output=True, text=True,
                         env={**env, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": ""})  # fmt: skip
    assert "vmhooks vm hotplug-nic" in man.stdout and "EXAMPLES" in man.stdout
    prefix.unlink()

    # A second install keeps the admin's config; uninstall keeps it too, and removes the rest.
    config.write_text(config.read_text() + "\n# mine\n")
    assert "kept" in make("install", stage, prefix, etc)
    out = make("uninstall", stage, prefix, etc)
    assert "kept" in out and config.read_text().endswith("# mine\n")
    assert files_under(stage) == {str(config.relative_to(stage))}
    assert not (staged / "lib/vmhooks").exists() and not (staged / "share/doc/vmhooks").exists()
