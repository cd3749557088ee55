"""`vmhooks history` as an admin types it: from the agent, and from the
database with the agent down."""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from agentproc import VMHOOKS, AgentProcess, domain_xml

from vmhooks.client import RpcError


def vmhooks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMHOOKS, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path, make_hook):
    make_hook("before_vm_start", "10_note", "echo 'starting quietly' >&2")
    make_hook("before_vm_pause", "50_guard", 'if [ -n "$nopause" ]; then echo "pausing $vmId is forbidden" >&2; exit 2; fi')
    make_hook("after_vm_destroy", "50_cleanup", "echo 'cleanup failed: lease busy' >&2; exit 1")
    process = AgentProcess(tmp_path / "agent", hooks_dir).start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.stop()

ME = f"uid {os.getuid()} ({pwd.getpwuid(os.getuid()).pw_name}) pid {os.getpid()}"  # as the agent saw the test


def create(agent: AgentProcess, name: str, vm_id: str | None = None, **custom: str) -> str:
    vm_id = vm_id or str(uuid.uuid4())
    agent.call("VM.create", xml=domain_xml(name, vm_id), custom=custom)
    return vm_id


def test_what_happened_to_a_vm_that_is_gone(agent: AgentProcess):
    vm_id = create(agent, "web-1", nopause="1")
    with pytest.raises(RpcError):
        agent.call("VM.pause", vmId=vm_id)
    agent.call("VM.destroy", vmId=vm_id)
    shown = vmhooks("history", "--vm", "web-1", "--socket", str(agent.socket))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    ops = [line for line in lines if line.startswith("#")]
    assert [re.sub(r"^#\d+ \S+ \S+ ", "", line).split(" by ")[0] for line in ops] == [
        f"create VM web-1 ({vm_id})", f"pause VM web-1 ({vm_id})", f"destroy VM web-1 ({vm_id})"
    ]  # fmt: skip
    assert f"by {ME}: FAILED: before_vm_pause: 50_guard failed (exit 2, chain stopped)" in ops[1]
    assert ops[1].endswith("; hooks: 1 run, 1 failed)") and ops[2].endswith("; hooks: 1 run, 1 failed)")
    # The failing scripts' stderr, and theirs only.
    assert f"      | pausing {vm_id} is forbidden" in lines
    assert "      | cleanup failed: lease busy" in lines
    assert "starting quietly" not in shown.stdout
    everything = vmhooks("history", "--vm", vm_id[:8], "--stderr", "--socket", str(agent.socket))
    assert "      | starting quietly" in everything.stdout.splitlines()


def test_vm_names_and_prefixes_are_matched_like_everywhere(agent: AgentProcess):
    first = create(agent, "twin", "3f2a8c1e-aaaa-4000-8000-000000000001")
    agent.call("VM.destroy", vmId=first)
    create(agent, "twin2", "3f2a8c1e-bbbb-4000-8000-000000000002")
    socket = ["--socket", str(agent.socket)]
    ambiguous = vmhooks("history", "--vm", "3f2a8c1e", *socket)
    assert ambiguous.returncode == 2 and ambiguous.stderr.count("\n") == 1
    assert "could be 2 VMs" in ambiguous.stderr and "(twin)" in ambiguous.stderr and "(twin2)" in ambiguous.stderr
    for gone in ("3f2a8c1e-a", "twin"):  # destroyed: known to the history only
        shown = json.loads(vmhooks("history", "--vm", gone, "--json", *socket).stdout)
        assert [(o["operation"], o["vm_name"]) for o in shown["operations"]] == [("create", "twin"), ("destroy", "twin")]
    unknown = vmhooks("history", "--vm", "nobody", *socket)
    assert unknown.returncode == 2 and "no VM named 'nobody'" in unknown.stderr


def test_filters_and_pages(agent: AgentProcess):
    socket = ["--socket", str(agent.socket)]
    vm_id = create(agent, "filtered", nopause="1")
    with pytest.raises(RpcError):
        agent.call("VM.pause", vmId=vm_id)
    failed = json.loads(vmhooks("history", "--failed", "--json", *socket).stdout)["operations"]
    assert [o["operation"] for o in failed] == ["pause"]
    future = vmhooks("history", "--since", "2999-01-01T00:00", *socket)
    assert future.stdout.strip() == "no operations recorded that match"
    recent = json.loads(vmhooks("history", "--since", "10m", "--until", "2999-01-01", "--json", *socket).stdout)
    assert [o["operation"] for o in recent["operations"]][-2:] == ["create", "pause"]
    first = vmhooks("history", "--limit", "1", *socket)
    hint = first.stdout.strip().splitlines()[-1]
    assert hint.startswith("older: vmhooks history --before ")
    older = vmhooks(*shlex.split(hint.removeprefix("older: vmhooks ")))
    assert older.returncode == 0 and "create VM filtered" in older.stdout
    for bad, why in ((["--since", "yesterday"], "neither ISO 8601"), (["--limit", "5000"], "from 1 to 1000"),
                     (["--point", "before_vm_strat"], "unknown hook point")):  # fmt: skip
        refused = vmhooks("history", *bad, *socket)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and why in refused.stderr


def test_with_the_agent_down_the_database_is_read_and_left_alone(agent: AgentProcess, tmp_path: Path, make_hook):
    vm_id = create(agent, "kept")
    agent.call("VM.destroy", vmId=vm_id)
    assert agent.stop() == 0
    state = agent.state_dir
    before = snapshot(state)
    shown = vmhooks("history", "--state-dir", str(state), "--vm", "kept")
    assert shown.returncode == 0, shown.stderr
    assert f"destroy VM kept ({vm_id}) by {ME}: ok" in shown.stdout
    assert snapshot(state) == before  # nothing created, nothing changed

    # No agent at the socket: the config file's state dir is read instead.
    config = tmp_path / "vmhooks.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\n')
    fallback = vmhooks("history", "--config", str(config), env={"VMHOOKS_SOCKET": str(tmp_path / "none.sock")})
    assert fallback.returncode == 0 and "create VM kept" in fallback.stdout
    assert f"reading {state / 'vmhooks.db'}" in fallback.stderr
    assert snapshot(state) == before


def test_an_agent_killed_mid_operation_leaves_it_unfinished(agent: AgentProcess, make_hook, marks: Path):
    make_hook("after_vm_start", "20_slow", f"touch {marks}/slow; sleep 30")
    caller = threading.Thread(target=lambda: pytest.raises(Exception, create, agent, "interrupted"))
    caller.start()
    deadline = time.monotonic() + 10
    while not (marks / "slow").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.stop(signal.SIGKILL)
    caller.join()
    before = snapshot(agent.state_dir)
    assert (agent.state_dir / "vmhooks.db-wal").exists()  # read as the dead agent left it
    shown = vmhooks("history", "--state-dir", str(agent.state_dir), "--vm", "interrupted")
    assert shown.returncode == 0, shown.stderr
    assert "create VM interrupted" in shown.stdout and "unfinished (running, or the agent stopped during it)" in shown.stdout
    assert "before_vm_start  10_note" in shown.stdout  # the chain that ended before the kill
    # The database and its WAL are as the agent left them, and no file was
    # made; only -shm, the index every SQLite reader of a WAL writes to, may move.
    after = snapshot(agent.state_dir)
    assert sorted(after) == sorted(before)
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {k: v for k, v in before.items() if not k.endswith("-shm")}


def test_the_demo_hint_works(tmp_path: Path):
    demo = vmhooks("demo", "--keep")
    assert demo.returncode == 0, demo.stderr
    kept = Path(re.search(r"^kept: (.+)$", demo.stdout, re.M)[1])  # type: ignore[index]
    try:
        hint = re.search(r"'(vmhooks history --state-dir [^']+)' reads it", demo.stdout)[1]  # type: ignore[index]
        shown = vmhooks(*shlex.split(hint)[1:], "--vm", "myvm")
        assert shown.returncode == 0, shown.stderr
        assert "create VM myvm" in shown.stdout and "destroy VM myvm" in shown.stdout
    finally:
        subprocess.run(["rm", "-rf", str(kept)], check=True)


def test_the_readme_sample_is_what_it_prints(tmp_path: Path, hooks_dir: Path, make_hook):
    make_hook("before_vm_start", "50_pincpu",
              "sed -i \"s|<vcpu placement='static'>|<vcpu placement='static' cpuset='$pincpu'>|\" \"$_hook_domxml\"")
    make_hook("before_vm_pause", "50_guard", 'if [ -n "$nopause" ]; then echo "pausing $vmId is forbidden" >&2; exit 2; fi')
    make_hook("after_vm_destroy", "50_release", 'echo "lease of $vmId still held" >&2; exit 1')
    agent = AgentProcess(tmp_path / "agent", hooks_dir).start()
    vm_id = "3f2a8c1e-5de9-468a-9fae-16050c6b3dcc"
    agent.call("VM.create", xml=domain_xml("web-1", vm_id), custom={"pincpu": "0-1", "nopause": "1"})
    with pytest.raises(RpcError):
        agent.call("VM.pause", vmId=vm_id)
    agent.call("VM.destroy", vmId=vm_id)
    assert agent.stop() == 0
    printed = vmhooks("history", "--state-dir", str(agent.state_dir), "--vm", "web-1").stdout
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    sample = readme.split("$ vmhooks history --vm web-1\n", 1)[1].split("```", 1)[0]

    def shape(text: str) -> list[str]:
        """Times, durations and ids vary from run to run; the rest must not."""
        text = re.sub(r"#\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "#N TIME", text)
        text = re.sub(r"\(\d+\.\d+ s;", "(S s;", text)
        text = re.sub(r"by uid \d+ \(\S+\) pid \d+", "by CLIENT", text)
        text = re.sub(r"(ok|stopped-chain|error) +(\d+) +\d+\b", r"\1 \2 MS", text)
        return [" ".join(line.split()) for line in text.strip().splitlines()]

    assert shape(printed) == shape(sample)


def test_runs_forked_from_the_warm_interpreter_say_so(tmp_path: Path, hooks_dir: Path, make_hook):
    body = "import hooking\nhooking.write_domxml(hooking.read_domxml())\n"
    make_hook("before_vm_start", "10_py", body, lang="python")
    make_hook("before_vm_start", "20_sh", "exit 0")
    make_hook("before_vm_start", "30_py_guard", "import sys\nsys.exit(2)\n", lang="python")
    agent = AgentProcess(tmp_path / "agent", hooks_dir).start()
    vm_id = str(uuid.uuid4())
    with pytest.raises(RpcError):
        create(agent, "forked", vm_id)
    live = vmhooks("history", "--vm", vm_id, "--socket", str(agent.socket))
    assert agent.stop() == 0
    for shown in (live, vmhooks("history", "--vm", vm_id, "--state-dir", str(agent.state_dir))):
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        note = next(line for line in lines if line.lstrip().startswith("POINT ")).index("NOTE")
        rows = {line.split()[1]: line[note:] for line in lines if line.startswith("    before_vm_start ")}
        assert rows == {"10_py": "fast path", "20_sh": "", "30_py_guard": "exit 2, chain stopped; fast path"}
    listed = json.loads(vmhooks("history", "--vm", vm_id, "--json", "--state-dir", str(agent.state_dir)).stdout)
    runs = [run for op in listed["operations"] for chain in op["chains"] for run in chain["runs"]]
    assert [(run["script"], run["fast_path"]) for run in runs] == [("10_py", True), ("20_sh", False),
                                                                   ("30_py_guard", True)]  # fmt: skip


def test_the_script_whose_output_was_rejected_shows_its_stderr():
    from vmhooks.commands.history import chain_lines

    run = {"script": "50_edit", "status": "ok", "rc": 0, "duration_s": 0.01, "stderr": "renamed it\n",
           "changed": True, "diff": "", "note": ""}  # fmt: skip
    quiet = {**run, "script": "10_quiet", "stderr": "all good\n", "changed": False}
    chain = {"point": "before_vm_start", "rejected": "output rejected: 50_edit changed the domain <name>",
             "edits_discarded": False, "warnings": [], "runs": [quiet, run]}  # fmt: skip
    lines = chain_lines({"chains": [chain]}, all_stderr=False, diffs=False)
    assert "before_vm_start/50_edit stderr:" in lines and "  | renamed it" in lines
    assert "  | all good" not in lines
    assert "before_vm_start: output rejected: 50_edit changed the domain <name>" in lines
