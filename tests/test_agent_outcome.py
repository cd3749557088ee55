"""agent/outcome: one record and one log line per operation, whatever its
end, with who asked; what libvirt did by itself, with its reason."""
from __future__ import annotations

import logging
import uuid
from functools import partial
from pathlib import Path

import pytest
from agentproc import AgentProcess, domain_xml, hook_runs, wait_for, whole_history

from vmhooks.agent import Agent
from vmhooks.agent.outcome import CALLER
from vmhooks.config import AgentSettings
from vmhooks.errors import HookError, LibvirtError, NoSuchVmError
from vmhooks.history import POLLED_KEPT


def operations(agent: Agent, vm_id: str | None = None, **filters) -> list[dict]:
    return whole_history(agent.history, vmId=vm_id, limit=1000, **filters)


def outcomes(agent: Agent, vm_id: str) -> list[tuple]:
    return [(o["operation"], o["caller"], o["result"], o["hooks_run"], o["hooks_failed"]) for o in operations(agent, vm_id)]


def test_every_operation_leaves_one_record_also_without_hooks(agent):
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("plain", vm_id))
    agent.pause(vm_id)
    agent.cont(vm_id)
    agent.destroy(vm_id)
    with pytest.raises(NoSuchVmError):
        agent.pause(vm_id)
    assert outcomes(agent, vm_id) == [
        ("create", "local", "ok", 0, 0), ("pause", "local", "ok", 0, 0), ("cont", "local", "ok", 0, 0),
        ("destroy", "local", "ok", 0, 0), ("pause", "local", f"no VM with id {vm_id}", 0, 0),
    ]  # fmt: skip
    assert all(o["vm_name"] == "plain" and o["duration_s"] > 0 for o in operations(agent, vm_id)[:4])
    assert operations(agent)[0]["operation"] == "start"  # the agent's own start, caller "agent"


def test_a_start_libvirt_refused_says_so_after_ok_hooks(agent, make_hook):
    make_hook("before_vm_start", "10_ok", "echo fine >&2")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    agent.create(domain_xml("twin", first))
    with pytest.raises(LibvirtError):
        agent.create(domain_xml("twin", second))  # libvirt: a domain 'twin' already exists
    (failed,) = operations(agent, second)
    assert failed["operation"] == "create" and failed["error_kind"] == "libvirt_error"
    assert failed["result"].startswith("starting VM twin:") and "already exists" in failed["result"]
    assert [(c["point"], [r["status"] for r in c["runs"]]) for c in failed["chains"]] == [("before_vm_start", ["ok"])]
    assert agent.list_vms() == [{"vmId": first, "name": "twin", "status": "up", "custom": {}}]


def test_a_hook_that_refuses_is_the_result(agent, make_hook):
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("guarded", vm_id))
    make_hook("before_vm_pause", "50_no", "echo 'not now' >&2; exit 2")
    make_hook("after_vm_destroy", "50_warn", "echo 'cleanup failed' >&2; exit 1")
    with pytest.raises(HookError):
        agent.pause(vm_id)
    agent.destroy(vm_id)
    pause, destroy = operations(agent, vm_id)[1:]
    assert pause["error_kind"] == "hook_error" and "50_no failed (exit 2, chain stopped): not now" in pause["result"]
    assert (pause["hooks_run"], pause["hooks_failed"]) == (1, 1)
    # An after hook that fails does not fail the operation, but it shows.
    assert (destroy["result"], destroy["hooks_failed"]) == ("ok", 1)
    assert [o["operation"] for o in operations(agent, vm_id, failed=True)] == ["pause", "destroy"]


def test_what_libvirt_did_by_itself_has_its_reason(agent, make_hook):
    make_hook("after_vm_destroy", "10_seen", "exit 0")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("self", vm_id))
    domain = agent.conn.lookupByUUIDString(vm_id)
    domain.suspend()
    wait_for(lambda: agent.list_vms()[0]["status"] == "paused")
    domain.resume()
    wait_for(lambda: agent.list_vms()[0]["status"] == "up")
    domain.destroy()
    wait_for(lambda: len(operations(agent, vm_id)) == 4 and operations(agent, vm_id)[-1]["result"] is not None)
    events = [(o["operation"], o["caller"], o["reason"], o["result"], o["hooks_run"]) for o in operations(agent, vm_id)[1:]]
    assert events == [
        ("event", "libvirt", "paused: paused outside this agent", "ok", 0),
        ("event", "libvirt", "resumed", "ok", 0),
        ("event", "libvirt", "stopped: destroyed outside this agent", "ok", 1),
    ]


def test_who_asked_comes_from_the_context(agent):
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("asked", vm_id))
    token = CALLER.set("uid 1000 (alice)")
    try:
        agent.pause(vm_id)
    finally:
        CALLER.reset(token)
    agent.cont(vm_id)
    assert [o["caller"] for o in operations(agent, vm_id)] == ["local", "uid 1000 (alice)", "local"]


def test_one_info_line_per_operation(agent, make_hook, caplog):
    make_hook("before_vm_pause", "10_ok", "exit 0")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("logged", vm_id))
    caplog.set_level(logging.INFO, logger="vmhooks")
    agent.pause(vm_id)
    agent.getStats(vm_id)  # polled: DEBUG only
    lines = [r for r in caplog.records if r.levelno == logging.INFO and hasattr(r, "outcome")]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith(f"pause VM logged ({vm_id}) by local: ok in ")
    assert lines[0].getMessage().endswith("; hooks: 1 run, 0 failed")
    assert lines[0].outcome["operation"] == "pause" and lines[0].outcome["vm_id"] == vm_id


def test_each_run_records_whether_it_was_forked_from_the_warm_interpreter(agent, make_hook, tmp_path: Path,
                                                                         hooks_dir: Path):  # fmt: skip
    body = "import hooking\nhooking.write_domxml(hooking.read_domxml())\n"
    make_hook("before_vm_start", "10_py", body, lang="python")
    make_hook("before_vm_start", "20_sh", "exit 0")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("forked", vm_id))
    runs = [(run["script"], run["fast_path"]) for run in hook_runs(agent.history(vmId=vm_id))]
    assert runs == [("10_py", True), ("20_sh", False)]
    # With the fast path off, the same Python hook is exec'd, and recorded so.
    exec_only = Agent(AgentSettings(libvirt_uri="test:///default", hooks_dir=hooks_dir, state_dir=tmp_path / "other",
                                    run_dir=tmp_path / "other-run", fast_path=False))  # fmt: skip
    exec_only.start()
    try:
        other = str(uuid.uuid4())
        exec_only.create(domain_xml("execd", other))
        assert [run["fast_path"] for run in hook_runs(exec_only.history(vmId=other))] == [False, False]
    finally:
        exec_only.stop()


def test_polling_leaves_no_empty_chain_and_only_the_latest_runs(tmp_path: Path, hooks_dir: Path, make_hook):
    make_hook("before_vm_start", "10_ok", "exit 0")
    settings = AgentSettings(libvirt_uri="test:///default", hooks_dir=hooks_dir, state_dir=tmp_path / "state",
                             run_dir=tmp_path / "run", properties="site=^[a-z]+$")  # fmt: skip
    agent = Agent(settings)
    agent.start()
    try:
        vm_id = str(uuid.uuid4())
        agent.create(domain_xml("polled", vm_id), custom={"other": "x"})  # 'other' is declared nowhere
        for _ in range(50):
            agent.getStats(vm_id)
        (create,) = operations(agent, vm_id)
        assert [c["point"] for c in create["chains"]] == ["before_vm_start"]  # the one that ran a script
        assert create["chains"][0]["warnings"] == ["custom property 'other' is declared by no installed hook or admin rule"]
        make_hook("after_get_vm_stats", "10_ok", "exit 0")
        for _ in range(1200):  # past the maintenance interval
            agent.getStats(vm_id)
        polled = [o for o in operations(agent, vm_id) if o["polled"]]
        assert POLLED_KEPT <= len(polled) <= POLLED_KEPT + 1000
        assert all(len(o["chains"]) == 1 and o["chains"][0]["runs"] for o in polled)
        assert operations(agent, vm_id)[0]["operation"] == "create"  # not crowded out
    finally:
        agent.stop()


def test_a_failed_history_write_aborts_nothing(agent, make_hook, monkeypatch, caplog):
    from vmhooks.errors import StateError

    make_hook("before_vm_pause", "10_ok", "exit 0")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("unrecorded", vm_id))
    store = agent.context.store

    def full(*_args: object) -> None:
        raise StateError("recording a hook chain in the state database x: database or disk is full")

    monkeypatch.setattr(store, "add_chain", full)
    assert agent.pause(vm_id)["status"] == "paused"
    assert any("the history could not be written, the operation goes on" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert operations(agent, vm_id)[-1]["result"] == "ok"
    assert hook_runs({"operations": operations(agent, vm_id)}) == []


def test_events_never_run_hooks_for_a_vm_that_never_started(agent, make_hook, tmp_path):
    make_hook("after_vm_destroy", "10_seen", f"echo $vmId >> {tmp_path}/destroyed")
    vm_id = str(uuid.uuid4())
    agent.create(domain_xml("twin2", str(uuid.uuid4())))
    with pytest.raises(LibvirtError):  # libvirt: a domain 'twin2' already exists
        agent.create(domain_xml("twin2", vm_id))
    with pytest.raises(NoSuchVmError):
        agent.destroy(vm_id)
    assert not (tmp_path / "destroyed").exists()


def test_the_history_stays_within_its_size_whatever_the_hooks_write(tmp_path: Path, hooks_dir: Path, make_hook):
    """--history-max-mb with hooks that write 300 kB of stderr and add 200 kB
    to what they are given, polled and not: runs are cut to 64 KiB, polled
    operations thinned, the rest pruned oldest first."""
    loud = "head -c 300000 /dev/zero | tr '\\0' e >&2"
    for point in ("before_vm_pause", "before_vm_cont"):
        make_hook(point, "10_loud", loud)
    make_hook("after_get_vm_stats", "10_loud", f"""{loud}
        python3 -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d[0]['pad']='x'*200000; json.dump(d,open(p,'w'))" "$_hook_json"
    """)
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--history-max-mb", "4").start()
    try:
        vm_id = str(uuid.uuid4())
        agent.call("VM.create", xml=domain_xml("bounded", vm_id))
        for _ in range(60):
            agent.call("VM.getStats", vmId=vm_id)
        history = whole_history(partial(agent.call, "Host.getHookHistory"), vmId=vm_id, limit=1000)
        assert history[0]["operation"] == "create"  # polling did not crowd it out
        polled = [o for o in history if o["polled"]]
        assert POLLED_KEPT <= len(polled) < 60
        run = polled[-1]["chains"][0]["runs"][0]
        for text in (run["stderr"], run["diff"]):
            assert len(text.encode()) <= 64 << 10 and "bytes cut by vmhooks" in text
        for _ in range(40):  # 80 operations of 64 KiB each: 5 MiB of history
            agent.call("VM.pause", vmId=vm_id)
            agent.call("VM.cont", vmId=vm_id)
        database = agent.state_dir / "vmhooks.db"
        assert database.stat().st_size <= 5 << 20
        history = whole_history(partial(agent.call, "Host.getHookHistory"), vmId=vm_id, limit=1000)
        assert history[0]["operation"] != "create"  # the oldest went first
        assert [o["operation"] for o in history[-2:]] == ["pause", "cont"]
        assert agent.call("Host.getHookHistory", limit=1)["counters"]["pruned_operations"] > 0
    finally:
        agent.stop()
    assert "history over 4 MiB: forgot its" in agent.log()
