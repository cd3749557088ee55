"""The README's sample sessions are what the program prints today: every
```console block is run, command by command, against the tutorial's hook
and the seed's domain XML (and a real agent for the `vm` commands), and
its output compared with the README's, times and durations normalised."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from agentproc import VMHOOKS, AgentProcess
from conftest import REPO, SEED_XML_PATH

README = REPO / "README.md"
# Times and durations differ from run to run.
VARIABLE = [(re.compile(r"\b\d+(\.\d+)?\s?(ms|us|s)\b"), "<duration>"),
            (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*"), "<time>")]  # fmt: skip


def console_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Each ```console block as (command, expected output) pairs."""
    blocks = []
    for match in re.finditer(r"^( *)```console\n(.*?)^\1```", text, re.S | re.M):
        indent = len(match.group(1))
        lines = [line[indent:] for line in match.group(2).splitlines()]
        pairs: list[tuple[str, list[str]]] = []
        for line in lines:
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            else:
                pairs[-1][1].append(line)
        blocks.append([(command, "\n".join(output)) for command, output in pairs])
    return blocks


def normalise(text: str) -> str:
    for pattern, replacement in VARIABLE:
        text = pattern.sub(replacement, text)
    return "\n".join(re.sub(r" +", " ", line).rstrip() for line in text.strip("\n").splitlines())


def tutorial_hook(text: str) -> str:
    """The hook of the tutorial's step 1, as the README shows it."""
    code = re.search(r"`hooks/before_vm_start/50_pincpu`:\n\n *```python\n(.*?)\n *```", text, re.S)
    assert code, "the tutorial's hook is not in the README any more"
    lines = code.group(1).splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    hook = "\n".join(line[indent:] for line in lines) + "\n"
    if not os.access("/usr/bin/python3", os.X_OK):
        hook = hook.replace("#!/usr/bin/python3", f"#!{sys.executable}", 1)
    return hook


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """What the README's reader has: hooks/ with the tutorial's hook, domain.xml."""
    os.chmod(tmp_path, 0o755)
    hook = tmp_path / "hooks" / "before_vm_start" / "50_pincpu"
    hook.parent.mkdir(parents=True)
    for directory in (tmp_path / "hooks", hook.parent):
        directory.chmod(0o755)
    hook.write_text(tutorial_hook(README.read_text()))
    hook.chmod(0o755)
    (tmp_path / "domain.xml").write_text(SEED_XML_PATH.read_text())
    return tmp_path


def test_the_readme_has_sample_sessions():
    commands = [command for block in console_blocks(README.read_text()) for command, _ in block]
    assert any(command.startswith("vmhooks hooks run") for command in commands)
    assert any(command.startswith("vmhooks vm create") for command in commands)


def test_every_sample_session_prints_what_the_readme_shows(workdir: Path):
    agent = AgentProcess(workdir / "agent", workdir / "hooks").start()
    try:
        env = {**os.environ, "VMHOOKS_SOCKET": str(agent.socket)}
        for block in console_blocks(README.read_text()):
            for command, expected in block:
                argv = shlex.split(command)
                assert argv[0] == "vmhooks", command
                done = subprocess.run([*VMHOOKS, *argv[1:]], cwd=workdir, env=env, capture_output=True,
                                      text=True, timeout=120)  # fmt: skip
                assert normalise(done.stdout + done.stderr) == normalise(expected), command
    finally:
        agent.stop()
