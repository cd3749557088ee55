"""scripts/shellfiles.py: the man page and the bash and zsh completions are
generated from the parser, so every subcommand and option is in each; the
bash completion completes as a user tabs."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from vmhooks.cli import build_parser


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shellfiles")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run([sys.executable, str(REPO / "scripts" / "shellfiles.py"), str(out)], check=True, env=env,
                   capture_output=True, timeout=120)  # fmt: skip
    return out


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


EVERY = list(commands(build_parser()))


def test_every_command_and_option_is_in_the_completions(generated: Path):
    bash, zsh = (generated / "vmhooks.bash").read_text(), (generated / "_vmhooks").read_text()
    assert len(EVERY) > 35 and (("vm", "hotplug-memory") in dict(EVERY))
    for path, parser in EVERY:
        if path:
            assert path[-1] in bash and path[-1] in zsh, path
        for action in parser._actions:
            for option in action.option_strings:
                assert option in bash and option in zsh, (path, option)


def test_every_command_and_option_is_in_the_man_page(generated: Path):
    page = subprocess.run(["man", "-l", str(generated / "vmhooks.1")], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "250"}, timeout=60).stdout  # fmt: skip
    page = page.replace("\u2010", "-").replace("\u2212", "-")
    assert page.startswith("VMHOOKS(1)") and "2023-11-14" in page  # SOURCE_DATE_EPOCH
    for path, parser in EVERY:
        if path:
            assert f"vmhooks {' '.join(path)}" in page, path
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, (path, option)
    assert "vmhooks vm set-cpus myvm 4" in page  # the examples of --help
    for section in ("EXAMPLES", "FILES", "ENVIRONMENT", "SEE ALSO"):
        assert f"\n{section}\n" in page


def complete(generated: Path, *words: str) -> list[str]:
    """What bash offers after `vmhooks WORDS...` (the last word is being typed)."""
    script = (
        f'source {generated / "vmhooks.bash"}\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n'
        'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()\n'
        '_shtab_vmhooks\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", script, "bash", "vmhooks", *words], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sorted(done.stdout.split())


def test_bash_completes_commands_options_choices_and_points(generated: Path):
    assert complete(generated, "vm", "hotp") == ["hotplug-disk", "hotplug-memory", "hotplug-nic"]
    assert complete(generated, "hooks", "") == ["check", "list", "points", "run"]
    assert complete(generated, "hooks", "run", "before_vm_mig") == [
        "before_vm_migrate_destination", "before_vm_migrate_source"]
    assert complete(generated, "serve", "--log-format", "") == ["json", "text"]
    assert "--device-prop" in complete(generated, "vm", "create", "--")
    assert complete(generated, "vm", "set-ticket", "x", "--existing-conn-action", "k") == ["keep"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (scripts/bootstrap installs it)")
def test_zsh_completion_is_valid_zsh_defining_its_function(generated: Path):
    done = subprocess.run(
        ["zsh", "-fc", f"fpath=({generated} $fpath); autoload -Uz _vmhooks; "
         f"source {generated / '_vmhooks'} 2>/dev/null; print -l ${{(k)functions[(I)_shtab_vmhooks*]}}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["zsh", "-n", str(generated / "_vmhooks")], timeout=60).returncode == 0
    assert {"_shtab_vmhooks", "_shtab_vmhooks_commands", "_shtab_vmhooks_vm_commands"} <= set(done.stdout.split())
