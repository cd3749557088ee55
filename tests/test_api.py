"""Black-box tests of the agent: a real `vmhooks serve` process on libvirt's
test driver, driven through its JSON-RPC API, with real hook scripts."""
from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import stat
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
from agentproc import VMHOOKS, AgentProcess, domain_xml, hook_runs, trace_hooks, traced, whole_history

from vmhooks.client import RpcError
from vmhooks.points import POINTS

ALL_POINTS = sorted(POINTS)


@pytest.fixture
def trace_log(tmp_path: Path) -> Path:
    return tmp_path / "trace.log"


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path, trace_log: Path):
    trace_hooks(hooks_dir, ALL_POINTS, trace_log)
    process = AgentProcess(tmp_path / "agent", hooks_dir).start()
    yield process
    if process.proc and process.proc.poll() is None:
        assert process.stop() == 0, process.log()


def new_vm(agent: AgentProcess, **params) -> str:
    vm_id = str(uuid.uuid4())
    result = agent.call("VM.create", xml=domain_xml(f"vm-{vm_id[:8]}", vm_id), **params)
    assert result["vmId"] == vm_id
    return vm_id


def test_agent_start_and_stop_run_the_vdsm_points(tmp_path, hooks_dir, trace_log):
    trace_hooks(hooks_dir, ["before_vdsm_start", "after_vdsm_stop"], trace_log)
    process = AgentProcess(tmp_path / "agent", hooks_dir).start()
    assert traced(trace_log) == ["before_vdsm_start"]
    assert process.stop() == 0
    assert traced(trace_log) == ["before_vdsm_start", "after_vdsm_stop"]
    assert not process.socket.exists()


def test_socket_is_private(agent):
    assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o600


def test_lifecycle_runs_points_in_order(agent, trace_log):
    vm_id = new_vm(agent, custom={"pincpu": "0"})
    assert traced(trace_log, vm_id) == ["before_vm_start", "after_vm_start"]
    for method, expected in [
        ("VM.pause", ["before_vm_pause", "after_vm_pause"]),
        ("VM.cont", ["before_vm_cont", "after_vm_cont"]),
        ("VM.hibernate", ["before_vm_hibernate", "after_vm_hibernate"]),
        ("VM.dehibernate", ["before_vm_dehibernate", "after_vm_dehibernate"]),
        ("VM.getStats", ["before_get_vm_stats", "after_get_vm_stats"]),
        ("VM.setNumberOfCpus", ["before_set_num_of_cpus", "after_set_num_of_cpus"]),
        ("VM.destroy", ["before_vm_destroy", "after_vm_destroy"]),
    ]:
        trace_log.write_text("")
        params = {"numberOfCpus": 1} if method == "VM.setNumberOfCpus" else {}
        agent.call(method, vmId=vm_id, **params)
        assert traced(trace_log, vm_id) == expected, method
    assert agent.call("VM.list") == []


def test_status_follows_the_lifecycle(agent):
    vm_id = new_vm(agent)
    assert agent.call("VM.pause", vmId=vm_id)["status"] == "paused"
    assert agent.call("VM.cont", vmId=vm_id)["status"] == "up"
    assert agent.call("VM.hibernate", vmId=vm_id)["status"] == "hibernated"
    assert list((agent.state_dir / "hibernation").iterdir()) == [agent.state_dir / "hibernation" / f"{vm_id}.img"]
    assert agent.call("VM.dehibernate", vmId=vm_id)["status"] == "up"
    assert list((agent.state_dir / "hibernation").iterdir()) == []
    with pytest.raises(RpcError) as error:
        agent.call("VM.cont", vmId=vm_id)
    assert error.value.code == 6 and "is up" in str(error.value)


def test_device_hooks_wrap_the_start_and_replace_the_device(agent, hooks_dir, trace_log, make_hook):
    make_hook(
        "before_device_create",
        "50_extnet",
        """
        import os, hooking
        doc = hooking.read_domxml()
        iface = doc.getElementsByTagName('interface')[0]
        iface.setAttribute('type', 'network')
        source = iface.getElementsByTagName('source')[0]
        source.removeAttribute('bridge')
        source.setAttribute('network', os.environ['extnet'])
        hooking.write_domxml(doc)
        """,
        lang="python",
    )
    vm_id = new_vm(agent, deviceCustom={"52:54:00:12:34:56": {"extnet": "ovirtmgmt"}})
    assert traced(trace_log, vm_id) == [
        "before_device_create", "before_vm_start", "after_vm_start", "after_device_create"
    ]  # fmt: skip
    live = agent.call("VM.getXML", vmId=vm_id)
    assert "network='ovirtmgmt'" in live and "bridge='br0'" not in live
    trace_log.write_text("")
    agent.call("VM.destroy", vmId=vm_id)
    assert traced(trace_log, vm_id) == [
        "before_vm_destroy", "before_device_destroy", "after_device_destroy", "after_vm_destroy"
    ]  # fmt: skip


def test_before_vm_start_edits_are_what_libvirt_starts(agent, make_hook, seed_xml):
    make_hook(
        "before_vm_start",
        "50_pincpu",
        """
        import os, hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName('vcpu')[0].setAttribute('cpuset', os.environ['pincpu'])
        hooking.write_domxml(doc)
        """,
        lang="python",
    )
    result = agent.call("VM.create", xml=seed_xml, custom={"pincpu": "1-4"})
    live = agent.call("VM.getXML", vmId=result["vmId"])
    assert "cpuset='1-4'" in live
    agent.call("VM.destroy", vmId=result["vmId"])


def test_failing_before_hook_aborts_and_leaves_the_vm_as_it_was(agent, make_hook):
    vm_id = new_vm(agent)
    make_hook("before_vm_pause", "50_ok", "exit 0")
    make_hook("before_vm_pause", "60_no", "echo 'maintenance window closed' >&2; exit 2")
    make_hook("before_vm_pause", "70_never", "exit 0")
    with pytest.raises(RpcError) as error:
        agent.call("VM.pause", vmId=vm_id)
    assert error.value.code == 1
    assert "60_no" in str(error.value) and "maintenance window closed" in str(error.value)
    assert "50_ok" not in str(error.value)
    assert [s["name"] for s in error.value.data["scripts"]] == ["60_no"]
    assert agent.call("VM.list")[0]["status"] == "up"
    assert "<domain" in agent.call("VM.getXML", vmId=vm_id)
    stats = agent.call("VM.getStats", vmId=vm_id)["statsList"][0]
    assert stats["status"] == "Up"


def test_failing_before_vm_start_creates_nothing(agent, make_hook):
    make_hook("before_vm_start", "50_refuse", "echo 'no licence' >&2; exit 1")
    vm_id = str(uuid.uuid4())
    with pytest.raises(RpcError) as error:
        agent.call("VM.create", xml=domain_xml("refused", vm_id))
    assert "50_refuse failed (exit 1): no licence" in str(error.value)
    assert agent.call("VM.list") == []
    assert list((agent.run_dir / "payloads").iterdir()) == []
    assert list((agent.run_dir / "launch-flags").iterdir()) == []


def test_failing_after_hook_does_not_abort(agent, make_hook):
    vm_id = new_vm(agent)
    make_hook("after_vm_pause", "50_broken", "echo oops >&2; exit 1")
    assert agent.call("VM.pause", vmId=vm_id)["status"] == "paused"
    runs = hook_runs(agent.call("Host.getHookHistory", vmId=vm_id, point="after_vm_pause"))
    assert [(r["script"], r["status"], r["rc"], r["stderr"]) for r in runs if r["script"] == "50_broken"] == [
        ("50_broken", "error", 1, "oops\n")
    ]


def test_output_rejected_by_guardrail_aborts_start(agent, make_hook):
    make_hook("before_vm_start", "50_rename", "sed -i 's|<name>[^<]*</name>|<name>other</name>|' \"$_hook_domxml\"")
    with pytest.raises(RpcError) as error:
        new_vm(agent)
    assert "output rejected: 50_rename changed the domain <name>" in str(error.value)
    assert agent.call("VM.list") == []


def test_launch_paused_and_launch_flags_from_a_hook(agent, make_hook):
    vm_id = new_vm(agent, launchPaused=True)
    assert agent.call("VM.list")[0]["status"] == "paused"
    agent.call("VM.destroy", vmId=vm_id)
    make_hook(
        "before_vm_start",
        "50_paused",
        """
        import os, hooking
        assert hooking.load_vm_launch_flags_from_file(os.environ['vmId']) == 0
        hooking.dump_vm_launch_flags_to_file(os.environ['vmId'], 1)  # VIR_DOMAIN_START_PAUSED
        """,
        lang="python",
    )
    new_vm(agent)
    assert agent.call("VM.list")[0]["status"] == "paused"
    assert list((agent.run_dir / "launch-flags").iterdir()) == []


def test_history_records_every_run_with_its_diff(agent, make_hook):
    make_hook("before_vm_start", "50_cpuset", "sed -i \"s|<vcpu placement='static'>|<vcpu placement='static' cpuset='0'>|\" \"$_hook_domxml\"; echo pinned >&2")
    vm_id = new_vm(agent)
    runs = hook_runs(agent.call("Host.getHookHistory", vmId=vm_id, point="before_vm_start"))
    mine = [r for r in runs if r["script"] == "50_cpuset"]
    assert len(mine) == 1
    run = mine[0]
    assert run["status"] == "ok" and run["rc"] == 0 and run["changed"] is True
    assert run["stderr"] == "pinned\n" and run["operation"] == "create"
    assert '+  <vcpu cpuset="0" placement="static">2</vcpu>' in run["diff"]
    assert run["duration_s"] > 0 and run["time"] <= time.time()


def test_capabilities_carry_the_inventory_and_after_get_caps_output(agent, make_hook):
    make_hook(
        "after_get_caps",
        "50_site",
        "import hooking\ncaps = hooking.read_json()\ncaps['site'] = 'lab'\nhooking.write_json(caps)\n",
        lang="python",
    )
    caps = agent.call("Host.getCapabilities")
    assert caps["site"] == "lab"
    assert set(caps["hooks"]["after_get_caps"]) == {"05_trace", "50_site"}
    assert len(caps["hooks"]["after_get_caps"]["50_site"]["checksum"]) == 64
    stats = agent.call("Host.getStats")
    assert stats["vmCount"] == 0


def test_json_hook_writing_garbage_is_rejected(agent, make_hook):
    make_hook("after_get_stats", "50_garbage", "echo '{not json' > \"$_hook_json\"")
    with pytest.raises(RpcError) as error:
        agent.call("Host.getStats")
    assert "50_garbage wrote invalid JSON" in str(error.value)


def test_not_supported_operations_run_the_fail_point(agent, trace_log):
    vm_id = new_vm(agent)
    trace_log.write_text("")
    nic = "<interface type='bridge'><mac address='52:54:00:00:00:99'/><source bridge='br1'/></interface>"
    with pytest.raises(RpcError) as error:
        agent.call("VM.hotplugNic", vmId=vm_id, xml=nic, custom={"extnet": "x"})
    assert error.value.code == 5 and "not supported by this libvirt driver" in str(error.value)
    assert traced(trace_log, vm_id) == ["before_nic_hotplug", "after_nic_hotplug_fail"]
    trace_log.write_text("")
    with pytest.raises(RpcError):
        agent.call("VM.setTicket", vmId=vm_id, password="secret", ttl=60)
    assert traced(trace_log, vm_id) == ["before_vm_set_ticket"]
    assert agent.call("VM.list")[0]["status"] == "up"


def test_update_device_fail_point_runs_when_before_fails(agent, trace_log, make_hook):
    vm_id = new_vm(agent)
    make_hook("before_update_device", "50_no", "exit 2")
    trace_log.write_text("")
    with pytest.raises(RpcError) as error:
        agent.call("VM.updateDevice", vmId=vm_id, xml="<graphics type='vnc'/>")
    assert error.value.code == 1
    assert traced(trace_log, vm_id) == ["before_update_device", "after_update_device_fail"]


def test_bad_requests_get_clear_errors(agent):
    with pytest.raises(RpcError) as error:
        agent.call("VM.pause", vmId=str(uuid.uuid4()))
    assert error.value.code == 2 and "no VM with id" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.create", xml="<domain><name>x</name>")
    assert error.value.code == 3 and "malformed XML" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.create", xml=domain_xml("x", str(uuid.uuid4())), custom={"LD_PRELOAD": "/tmp/x.so"})
    assert error.value.code == 3 and "LD_PRELOAD" in str(error.value) and "reserved" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.create", xml=domain_xml("x", str(uuid.uuid4())), custom={"ok": "a\0b"})
    assert error.value.code == 3 and "NUL" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.pause", vmId="../../etc")
    assert error.value.code == 3 and "not a UUID" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.nope")
    assert error.value.code == -32601
    with pytest.raises(RpcError) as error:
        agent.call("VM.pause", vmId=str(uuid.uuid4()), extra=1)
    assert error.value.code == -32602 and "unknown param(s) extra" in str(error.value)
    with pytest.raises(RpcError) as error:
        agent.call("VM.setNumberOfCpus", vmId=str(uuid.uuid4()), numberOfCpus="2")
    assert error.value.code == -32602
    assert agent.call("VM.list") == []


def _raw_post(agent: AgentProcess, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(agent.socket))
    connection = http.client.HTTPConnection("localhost")
    connection.sock = sock
    connection.request("POST", "/rpc", body, headers or {})
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data) if data else {}


def test_malformed_and_oversized_requests_never_crash_the_agent(agent):
    status, reply = _raw_post(agent, b"{not json")
    assert status == 200 and reply["error"]["code"] == -32700
    status, reply = _raw_post(agent, b'{"jsonrpc": "1.0", "method": "VM.list", "id": 1}')
    assert reply["error"]["code"] == -32600
    status, reply = _raw_post(agent, b"[]")
    assert reply["error"]["code"] == -32600
    status, reply = _raw_post(
        agent, json.dumps([{"jsonrpc": "2.0", "method": "VM.list", "id": 1}, {"jsonrpc": "2.0", "method": "x", "id": 2}]).encode()
    )
    assert [r.get("result", r.get("error", {}).get("code")) for r in reply] == [[], -32601]
    # The agent answers an oversized request from its headers, without reading it.
    oversized = socket.socket(socket.AF_UNIX)
    oversized.connect(str(agent.socket))
    oversized.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % ((16 << 20) + 1))
    response = http.client.HTTPResponse(oversized)
    response.begin()
    assert response.status == 413 and "16 MiB" in json.loads(response.read())["error"]["message"]
    oversized.close()
    # A client that sends half a request and stalls does not block others.
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(str(agent.socket))
    stalled.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    assert agent.call("VM.list") == []
    stalled.close()


def test_concurrent_operations_on_50_vms(agent):
    errors: list[BaseException] = []
    vm_ids = [str(uuid.uuid4()) for _ in range(50)]

    def lifecycle(vm_id: str) -> None:
        try:
            agent.call("VM.create", xml=domain_xml(f"c-{vm_id[:8]}", vm_id))
            agent.call("VM.pause", vmId=vm_id)
            agent.call("VM.cont", vmId=vm_id)
            agent.call("VM.destroy", vmId=vm_id)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=lifecycle, args=(vm_id,)) for vm_id in vm_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert agent.call("VM.list") == []
    runs = hook_runs({"operations": whole_history(partial(agent.call, "Host.getHookHistory"), limit=1000)})
    for vm_id in vm_ids:
        points = [r["point"] for r in runs if r["vm_id"] == vm_id]
        assert points == [
            "before_vm_start", "after_vm_start", "before_vm_pause", "after_vm_pause",
            "before_vm_cont", "after_vm_cont", "before_vm_destroy", "after_vm_destroy",
        ]  # fmt: skip


def test_operations_on_one_vm_are_serialised_and_different_vms_run_in_parallel(agent, make_hook, tmp_path):
    spans = tmp_path / "spans"
    spans.mkdir()
    make_hook(
        "before_vm_pause",
        "50_span",
        f"""
        import os, time
        start = time.time(); time.sleep(0.4)
        with open(os.path.join({str(spans)!r}, os.environ['vmId'] + '-' + str(os.getpid())), 'w') as f:
            f.write(f'{{start}} {{time.time()}}')
        """,
        lang="python",
    )
    vm_a, vm_b = new_vm(agent), new_vm(agent)
    results: list[object] = []

    def pause(vm_id: str) -> None:
        try:
            results.append(agent.call("VM.pause", vmId=vm_id)["status"])
        except RpcError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=pause, args=(vm,)) for vm in (vm_a, vm_a, vm_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The second pause of vm_a waited for the first, then found it paused.
    assert sorted(map(str, results)) == sorted(["paused", "paused", "6"])
    spans_of = {}
    for path in spans.iterdir():
        vm_id = path.name.rsplit("-", 1)[0]
        spans_of.setdefault(vm_id, []).append(tuple(map(float, path.read_text().split())))
    (a_start, a_end), = spans_of[vm_a]
    (b_start, b_end), = spans_of[vm_b]
    assert a_start < b_end and b_start < a_end  # overlapping: parallel


def test_restart_keeps_history_and_reports_vanished_vms(tmp_path, hooks_dir, trace_log):
    trace_hooks(hooks_dir, ["before_vm_start", "after_vm_destroy"], trace_log)
    first = AgentProcess(tmp_path / "agent", hooks_dir).start()
    vm_id = new_vm(first)
    assert first.stop() == 0
    # test:///default lives inside the agent process: the VM is gone with it.
    second = AgentProcess(tmp_path / "agent", hooks_dir).start()
    try:
        assert second.call("VM.list") == []
        assert traced(trace_log, vm_id) == ["before_vm_start", "after_vm_destroy"]
        points = [r["point"] for r in hook_runs(second.call("Host.getHookHistory", vmId=vm_id))]
        assert points == ["before_vm_start", "after_vm_destroy"]
    finally:
        assert second.stop() == 0


def test_crash_mid_operation_leaves_no_temp_files_after_restart(tmp_path, hooks_dir, make_hook):
    make_hook("before_vm_start", "50_slow", "sleep 30")
    first = AgentProcess(tmp_path / "agent", hooks_dir).start()
    caller = threading.Thread(target=lambda: pytest.raises(Exception, new_vm, first))
    caller.start()
    deadline = time.monotonic() + 10
    while not list((first.run_dir / "payloads").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((first.run_dir / "payloads").iterdir()), "the hook never started"
    first.stop(signal_kill := 9)
    caller.join()
    assert signal_kill == 9
    second = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--hook-timeout", "5").start()
    try:
        assert list((second.run_dir / "payloads").iterdir()) == []
        assert second.call("VM.list") == []
    finally:
        second.stop()


def test_property_values_checked_against_installed_hooks_and_admin_rules(tmp_path, hooks_dir):
    from vmhooks.catalogue import install

    install(["pincpu"], hooks_dir)
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--properties", "site=^[a-z]+$").start()
    try:
        with pytest.raises(RpcError) as error:
            new_vm(agent, custom={"pincpu": "all of them"})
        assert error.value.code == 3 and "pincpu='all of them' does not match" in str(error.value)
        with pytest.raises(RpcError) as error:
            new_vm(agent, custom={"site": "Lab 1"})
        assert error.value.code == 3 and "site='Lab 1'" in str(error.value)
        assert agent.call("VM.list") == []
        vm_id = new_vm(agent, custom={"pincpu": "0-1", "site": "lab", "other": "x"})
        assert "cpuset='0-1'" in agent.call("VM.getXML", vmId=vm_id)
        history = hook_runs(agent.call("Host.getHookHistory", vmId=vm_id, point="before_vm_start"))
        assert history[-1]["warnings"] == ["custom property 'other' is declared by no installed hook or admin rule"]
    finally:
        agent.stop()


def test_batches_nesting_and_notifications(agent):
    status, reply = _raw_post(agent, json.dumps([{"jsonrpc": "2.0", "method": "VM.list", "id": i} for i in range(101)]).encode())
    assert reply["error"]["code"] == -32600 and "exceeds 100" in reply["error"]["message"]
    status, reply = _raw_post(agent, b"[" * 100_000 + b"]" * 100_000)
    assert reply["error"]["code"] == -32700 and "nested too deeply" in reply["error"]["message"]
    # A notification (no id) gets no answer, not even for an error.
    status, reply = _raw_post(agent, b'{"jsonrpc": "2.0", "method": "VM.pause", "params": {"vmId": "x"}}')
    assert status == 204 and reply == {}
    status, reply = _raw_post(agent, b'{"jsonrpc": "2.0", "method": "VM.list", "id": 1}', {"Content-Length": "\u00b2"})
    assert status == 400 and "number of bytes" in reply["error"]["message"]
    assert agent.call("VM.list") == []


def test_host_get_hooks_is_the_inventory(agent):
    hooks = agent.call("Host.getHooks")
    assert set(hooks) == set(ALL_POINTS)
    assert all(set(scripts) == {"05_trace"} for scripts in hooks.values())


def test_all_vm_stats_go_through_their_hooks(agent, make_hook, trace_log):
    vm_a, vm_b = new_vm(agent), new_vm(agent)
    agent.call("VM.pause", vmId=vm_b)
    make_hook(
        "after_get_all_vm_stats",
        "50_tag",
        "import hooking\nstats = hooking.read_json()\nfor s in stats: s['tagged'] = True\nhooking.write_json(stats)\n",
        lang="python",
    )
    trace_log.write_text("")
    stats = {s["vmId"]: s for s in agent.call("Host.getAllVmStats")}
    assert set(stats) == {vm_a, vm_b}
    assert stats[vm_a]["status"] == "Up" and stats[vm_b]["status"] == "Paused"
    assert all(s["tagged"] is True and s["vcpuCount"] == "2" for s in stats.values())
    assert traced(trace_log) == ["before_get_all_vm_stats", "after_get_all_vm_stats"]


def test_memory_hotplug_runs_its_before_point_then_reports_the_driver(agent, trace_log):
    vm_id = new_vm(agent)
    trace_log.write_text("")
    memory = "<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>"
    with pytest.raises(RpcError) as error:
        agent.call("VM.hotplugMemory", vmId=vm_id, xml=memory)
    assert error.value.code == 5
    assert traced(trace_log, vm_id) == ["before_memory_hotplug"]  # no _fail point exists for memory
    with pytest.raises(RpcError) as error:
        agent.call("VM.hotplugMemory", vmId=vm_id, xml="<disk/>")
    assert error.value.code == 3 and "takes a <memory> element" in str(error.value)


def test_a_callers_self_chosen_name_cannot_forge_log_lines():
    from vmhooks.api import MAX_CALLER_CHARS, printable

    assert printable("host2\nvmhooks.agent INFO: destroy ok\x1b[2J") == "host2?vmhooks.agent INFO: destroy ok?[2J"
    assert len(printable("x" * 10_000)) == MAX_CALLER_CHARS


def test_a_hook_may_act_on_the_vm_whose_operation_runs_it(tmp_path, hooks_dir, make_hook, marks):
    """VDSM's openstacknet resumes a VM started paused from its after_vm_start
    hook, with vdsm.client: the call must not wait for the create that waits
    for the hook (until the hook's timeout, leaving the VM paused)."""
    make_hook("after_vm_start", "50_resume", """
        import os
        from vdsm import client

        cli = client.connect("localhost", use_tls=False)
        print(cli.VM.cont(vmID=os.environ["vmId"])["status"], file=__import__("sys").stderr)
    """, lang="python")
    make_hook("after_vm_cont", "50_pause_again",  # the CLI, in a hook; once
              f"[ -e {marks}/once ] && exit 0; touch {marks}/once; {shlex.join(VMHOOKS)} vm pause \"$vmId\" >&2")  # fmt: skip
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--hook-timeout", "20").start()
    try:
        vm_id = str(uuid.uuid4())
        created = agent.call("VM.create", xml=domain_xml("resumed", vm_id), launchPaused=True)
        runs = {r["script"]: r for r in hook_runs(agent.call("Host.getHookHistory", vmId=vm_id))}
        assert runs["50_resume"]["status"] == "ok", runs["50_resume"]  # not a timeout waiting for itself
        assert runs["50_pause_again"]["status"] == "ok", runs["50_pause_again"]
        # create, then the hook's cont, then the nested pause: the answers say what is, not what was
        assert created["status"] == agent.call("VM.list")[0]["status"] == "paused"
        operations = [o["operation"] for o in whole_history(partial(agent.call, "Host.getHookHistory"), vmId=vm_id)]
        assert operations == ["create", "cont", "pause"]
        # Once the chain is over, the hooks' token is worth nothing: a late call waits its turn.
        assert agent.call("VM.cont", vmId=vm_id)["status"] == "up"
    finally:
        assert agent.stop() == 0, agent.log()


def test_a_before_hook_cannot_act_on_its_own_vm_mid_operation(tmp_path, hooks_dir, make_hook):
    """Before the operation's work is done, a hook's call about the same VM
    waits for it (here until the hook times out), so the two never mix: a
    destroy from before_vm_start cannot leave a VM running that was destroyed."""
    make_hook("before_vm_start", "50_destroy", f"{shlex.join(VMHOOKS)} vm destroy \"$vmId\" >&2")
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--hook-timeout", "2").start()
    try:
        vm_id = str(uuid.uuid4())
        with pytest.raises(RpcError, match=r"50_destroy failed \(timed out after 2s"):
            agent.call("VM.create", xml=domain_xml("mixed", vm_id))
        assert agent.call("VM.list") == []
        operations = whole_history(partial(agent.call, "Host.getHookHistory"), vmId=vm_id)
        assert [o["operation"] for o in operations][0] == "create"
        assert all(o["result"] != "ok" for o in operations if o["operation"] == "destroy")
    finally:
        assert agent.stop() == 0, agent.log()
