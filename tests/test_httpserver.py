"""The HTTP layer of a real agent process, over real sockets: methods and
framing, the overall request deadline, the write deadline, the connection
cap, running out of file descriptors, and the graceful stop on SIGTERM."""
from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from agentproc import AgentProcess, domain_xml, trace_hooks, traced, wait_for
from conftest import process_dead
from realhost import free_port
from tlsmaterial import make_tls_material

from vmhooks.client import AgentUnreachable, RpcError
from vmhooks.history import Filters
from vmhooks.store import Store

LIST = b'{"jsonrpc": "2.0", "method": "VM.list", "id": 1}'


def connect(agent: AgentProcess, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(str(agent.socket))
            return sock
        except BlockingIOError:  # the listen backlog is full for now
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def post(body: bytes, *headers: str) -> bytes:
    lines = ["POST /rpc HTTP/1.1", *(headers or (f"Content-Length: {len(body)}",))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the agent closes `sock` within `seconds` (what it sent before is skipped)."""
    sock.settimeout(seconds)
    try:
        read_to_eof(sock)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def exchange(sock: socket.socket, data: bytes) -> http.client.HTTPResponse:
    sock.sendall(data)
    response = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode())
    response.begin()
    return response


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path):
    process = AgentProcess(tmp_path / "agent", hooks_dir).start()
    yield process
    if process.proc and process.proc.poll() is None:
        assert process.stop() == 0, process.log()


# -- methods and framing -------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "GET", "BREW"])
def test_any_method_but_post_gets_405_in_json_with_allow(agent, method):
    with connect(agent) as sock:
        response = exchange(sock, f"{method} /rpc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        assert response.status == 405
        assert response.getheader("Allow") == "POST"
        assert response.getheader("Content-Type") == "application/json"
        error = json.loads(response.read())["error"]
        assert error["code"] == -32600 and method in error["message"]


def test_head_gets_405_with_no_body(agent):
    with connect(agent) as sock:
        response = exchange(sock, b"HEAD /rpc HTTP/1.1\r\n\r\n")
        assert response.status == 405 and response.getheader("Allow") == "POST"
        assert int(response.getheader("Content-Length")) > 0
        response.read()
        assert read_to_eof(sock) == b""  # HEAD: the length of a body that is not sent


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(b"{}" + post(LIST), "Content-Length: 2", "Content-Length: 40"),  # the rest would be a second request
        post(LIST, f"Content-Length: {len(LIST)}", f"Content-Length: {len(LIST)}"),  # even when they agree
        post(LIST, f"Content-Length: {len(LIST)}, {len(LIST)}"),
        post(b"2\r\n{}\r\n0\r\n\r\n" + post(LIST), "Transfer-Encoding: chunked", "Content-Length: 9"),
        post(b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
        post(LIST, f"Content-Length : {len(LIST)}"),
    ],
    ids=["two-lengths", "same-length-twice", "length-list", "chunked-and-length", "chunked", "space-in-name"],
)
def test_ambiguous_framing_gets_one_400_and_the_connection_closed(agent, request_bytes):
    with connect(agent) as sock:
        sock.sendall(request_bytes)
        answer = read_to_eof(sock)
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # never read as two requests
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == -32600
    assert agent.call("VM.list") == []


def test_keep_alive_serves_several_requests_on_one_connection(agent):
    with connect(agent) as sock:
        for _ in range(3):
            response = exchange(sock, post(LIST))
            assert response.status == 200 and json.loads(response.read())["result"] == []


# -- deadlines -------------------------------------------------------------------


def test_reading_one_request_has_an_overall_deadline(tmp_path, hooks_dir):
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--request-timeout", "2").start()
    try:
        slow = connect(agent)
        slow.sendall(b"POST /rpc HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # one header line every 0.5 s: each recv is quick, the whole is not
            while time.monotonic() - started < 10:
                slow.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.5)
        assert time.monotonic() - started < 5
        slow.close()
        idle = connect(agent)  # an idle keep-alive connection ends the same way
        exchange(idle, post(LIST)).read()
        assert closed_within(idle, 5)
        wait_for(lambda: "no complete request within the request timeout" in agent.log())
        assert agent.call("VM.list") == []
    finally:
        assert agent.stop() == 0


def test_a_slow_reader_gets_a_deadline_proportional_to_the_answer(tmp_path, hooks_dir):
    """--request-timeout 1 and 256 KiB/s: about 5 s to write a 1 MiB answer."""
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--request-timeout", "1").start()
    try:
        vm_id = str(uuid.uuid4())
        xml = domain_xml("big", vm_id).replace("<memory", f"<description>{'x' * (1 << 20)}</description><memory")
        agent.call("VM.create", xml=xml)
        request = post(json.dumps({"jsonrpc": "2.0", "method": "VM.getXML", "id": 1, "params": {"vmId": vm_id}}).encode())
        # A reader at 512 KiB/s takes longer than the request timeout and still gets all of it.
        with connect(agent) as steady:
            response = exchange(steady, request)
            length = int(response.getheader("Content-Length"))
            started, body = time.monotonic(), b""
            while chunk := response.read(64 << 10):
                body += chunk
                time.sleep(0.125)
            assert len(body) == length and time.monotonic() - started > 1
        # A reader that stops reading is cut off, and the cut is logged.
        with connect(agent) as stalled:
            response = exchange(stalled, request)
            length = int(response.getheader("Content-Length"))
            time.sleep(9)
            received = len(response.read1(1 << 16))
            try:
                while chunk := response.read1(1 << 16):
                    received += len(chunk)
            except (http.client.IncompleteRead, ConnectionResetError):
                pass
        assert received < length
        wait_for(lambda: "cut after" in agent.log() and "did not read the answer in time" in agent.log())
        assert agent.call("VM.list")[0]["vmId"] == vm_id
    finally:
        agent.stop()


def test_a_tls_peer_that_never_handshakes_is_cut(tmp_path, hooks_dir):
    os.chmod(tmp_path, 0o755)
    tls = make_tls_material(tmp_path / "tls")
    creds = tls.authority.issue(tls.directory, "a", "agent-a", server=True, client=True)
    port = free_port()
    agent = AgentProcess(
        tmp_path / "agent", hooks_dir, "test:///default", "--listen", f"127.0.0.1:{port}",
        "--tls-cert", str(creds.cert), "--tls-key", str(creds.key), "--tls-ca", str(tls.ca),
        "--request-timeout", "1", "--max-connections", "2",
    ).start()  # fmt: skip
    try:
        mute = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert closed_within(extra, 1)  # over the cap: closed at once
        assert all(closed_within(sock, 4) for sock in mute)  # handshake deadline
        wait_for(lambda: "no TLS handshake within the request timeout" in agent.log())
        for sock in (*mute, extra):
            sock.close()
    finally:
        assert agent.stop() == 0


# -- the connection cap and file descriptors ---------------------------------------


def test_connections_over_the_cap_get_503_and_no_thread(tmp_path, hooks_dir):
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--max-connections", "8").start()
    assert agent.proc is not None
    try:
        before = threads(agent.proc.pid)
        idle = [connect(agent) for _ in range(8)]
        time.sleep(0.5)
        with pytest.raises(RpcError) as busy:
            agent.call("VM.list")
        assert busy.value.code == -32000 and "max_connections" in str(busy.value)
        crowd = [connect(agent) for _ in range(200)]
        time.sleep(0.5)
        assert threads(agent.proc.pid) <= before + 8
        assert "refused a connection: 8 connections open" in agent.log()
        for sock in idle + crowd:
            sock.close()
        deadline = time.monotonic() + 5
        while True:  # slots free up as the agent sees the clients go
            try:
                assert agent.call("VM.list") == []
                break
            except RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        assert agent.stop() == 0


def test_connections_leave_no_thread_or_descriptor_behind(agent):
    assert agent.proc is not None
    agent.call("VM.list")
    time.sleep(0.5)  # that connection's thread ends after the client has its answer
    fds, before = len(os.listdir(f"/proc/{agent.proc.pid}/fd")), threads(agent.proc.pid)
    for index in range(300):
        with connect(agent) as sock:
            if index % 3 == 0:
                exchange(sock, post(LIST)).read()  # answered
            elif index % 3 == 1:
                sock.sendall(b"POST /rpc HTTP/1.1\r\n")  # left half-sent
    time.sleep(0.5)
    assert (len(os.listdir(f"/proc/{agent.proc.pid}/fd")), threads(agent.proc.pid)) == (fds, before)


def test_out_of_file_descriptors_the_agent_backs_off_and_keeps_serving(tmp_path, hooks_dir):
    """ulimit -n 128 and 1,000 connections: the agent refuses what it cannot
    take, answers the connection it has, and does not spin."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the test opens 1,000 sockets; the hard descriptor limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", prefix=["prlimit", "--nofile=128:128", "--"])
    agent.start()
    assert agent.proc is not None
    crowd: list[socket.socket] = []
    try:
        kept = connect(agent)
        assert exchange(kept, post(LIST)).read()
        for _ in range(1000):
            sock = socket.socket(socket.AF_UNIX)
            sock.setblocking(False)
            crowd.append(sock)
            try:
                sock.connect(str(agent.socket))
            except (BlockingIOError, ConnectionRefusedError):
                pass  # the backlog is full: that client waits, or is refused
        time.sleep(1)
        cpu, started = cpu_seconds(agent.proc.pid), time.monotonic()
        time.sleep(3)
        share = (cpu_seconds(agent.proc.pid) - cpu) / (time.monotonic() - started)
        assert share < 0.3, f"the agent used {share:.0%} of a core"
        response = exchange(kept, post(LIST))
        assert response.status == 200 and json.loads(response.read())["result"] == []
        assert threads(agent.proc.pid) < 128 + 16
        assert "cannot accept a connection: Too many open files" in agent.log()
        assert "only 128 file descriptors (ulimit -n)" in agent.log()  # said at start, with the fix
        kept.close()
    finally:
        for sock in crowd:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert agent.stop() == 0, agent.log()


# -- graceful stop ---------------------------------------------------------------


class SlowPause:
    """An agent whose before_vm_pause hook runs `hook` (after making
    marks/started), a VM, and VM.pause called in the background."""

    def __init__(self, tmp_path: Path, hooks_dir: Path, make_hook, marks: Path, hook: str, grace: str) -> None:
        self.trace_log = tmp_path / "trace.log"
        trace_hooks(hooks_dir, ["after_vdsm_stop"], self.trace_log)
        make_hook("before_vm_pause", "50_slow", f"touch {marks}/started\n{hook}")
        self.agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--shutdown-grace", grace).start()
        assert self.agent.proc is not None
        self.proc = self.agent.proc
        self.vm_id = str(uuid.uuid4())
        self.agent.call("VM.create", xml=domain_xml("slow", self.vm_id))
        self.outcome: list[object] = []
        self.marks = marks

    def pause_in_background(self) -> threading.Thread:
        def pause() -> None:
            try:
                self.outcome.append(self.agent.call("VM.pause", vmId=self.vm_id))
            except BaseException as exc:  # asserted by the test
                self.outcome.append(exc)

        thread = threading.Thread(target=pause)
        thread.start()
        wait_for((self.marks / "started").exists)
        return thread


def test_sigterm_closes_idle_connections_and_lets_requests_in_flight_finish(tmp_path, hooks_dir, make_hook, marks):
    slow = SlowPause(tmp_path, hooks_dir, make_hook, marks, "sleep 5", grace="10")
    idle = connect(slow.agent)
    exchange(idle, post(LIST)).read()  # keep-alive, now idle
    half = connect(slow.agent)
    half.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    trickle = connect(slow.agent)
    trickle.sendall(b"POST /rpc HTTP/1.1\r\n")
    in_flight = slow.pause_in_background()
    slow.proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    for sock in (idle, half, trickle):
        assert closed_within(sock, 3), "a connection with no request in flight was kept open"
    assert time.monotonic() - stopped_at < 3.5 and in_flight.is_alive()
    assert slow.proc.wait(timeout=15) == 0
    in_flight.join()
    assert isinstance(slow.outcome[0], dict) and slow.outcome[0]["status"] == "paused"
    assert traced(slow.trace_log) == ["after_vdsm_stop"]
    assert not slow.agent.socket.exists()


def test_after_the_grace_the_hooks_of_operations_in_flight_are_killed_and_nothing_is_half_done(
    tmp_path, hooks_dir, make_hook, marks
):
    hook = f"setsid sleep 61 & echo $! > {marks}/child\necho $$ > {marks}/pid; exec sleep 60"
    slow = SlowPause(tmp_path, hooks_dir, make_hook, marks, hook, grace="1")
    in_flight = slow.pause_in_background()
    wait_for(lambda: (marks / "pid").exists() and (marks / "child").exists())
    hook_pid, child_pid = int((marks / "pid").read_text()), int((marks / "child").read_text())
    slow.proc.send_signal(signal.SIGTERM)
    assert slow.proc.wait(timeout=20) == 0
    in_flight.join(timeout=5)
    try:
        assert process_dead(hook_pid, within=0) and process_dead(child_pid, within=0), "a hook outlived the agent"
        assert "still running after their hooks were killed" not in slow.agent.log()
        state = Store.open_read_only(slow.agent.state_dir / "vmhooks.db")
        try:  # the pause was refused by its killed hook, not half done, and its record is finished
            assert [vm.status for vm in state.vms()] == ["up"]
            page = state.history(Filters(vm_id=slow.vm_id))
        finally:
            state.close()
        pause = next(o for o in page["operations"] if o["operation"] == "pause")
        assert pause["error_kind"] == "hook_error" and "the agent is stopping" in pause["result"]
        run = pause["chains"][0]["runs"][0]
        assert run["status"] == "timeout" and run["note"] == "killed with every process it started: the agent is stopping"
    finally:
        for pid in (hook_pid, child_pid):
            if not process_dead(pid, within=0):
                os.kill(pid, signal.SIGKILL)


def test_after_the_cut_no_later_chain_of_an_operation_in_flight_starts(tmp_path, hooks_dir, make_hook, marks):
    """before_vm_destroy cannot stop a destroy: cut, the destroy goes on, and
    its after_vm_destroy, which would start after the cut, does not run."""
    make_hook("before_vm_destroy", "50_slow", f"touch {marks}/started; exec sleep 60")
    make_hook("after_vm_destroy", "50_after", f"touch {marks}/after; exec sleep 40")
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--shutdown-grace", "1").start()
    assert agent.proc is not None
    vm_id = str(uuid.uuid4())
    agent.call("VM.create", xml=domain_xml("cut", vm_id))
    answers: list[object] = []

    def call_destroy() -> None:
        try:
            answers.append(agent.call("VM.destroy", vmId=vm_id))
        except AgentUnreachable as exc:
            answers.append(exc)

    destroy = threading.Thread(target=call_destroy)
    destroy.start()
    wait_for((marks / "started").exists)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=30) == 0
    destroy.join(5)
    assert len(answers) == 1 and isinstance(answers[0], AgentUnreachable)  # cut off after the grace
    assert not (marks / "after").exists()
    state = Store.open_read_only(agent.state_dir / "vmhooks.db")
    try:
        operation = next(o for o in state.history(Filters(vm_id=vm_id))["operations"] if o["operation"] == "destroy")
    finally:
        state.close()
    runs = {chain["point"]: chain["runs"][0] for chain in operation["chains"]}
    assert runs["before_vm_destroy"]["note"] == "killed with every process it started: the agent is stopping"
    assert runs["after_vm_destroy"]["note"] == "not started: the agent is stopping"


def test_sigterm_waits_no_longer_than_the_grace(tmp_path, hooks_dir, make_hook, marks):
    slow = SlowPause(tmp_path, hooks_dir, make_hook, marks, f"echo $$ > {marks}/pid; exec sleep 60", grace="1")
    in_flight = slow.pause_in_background()
    try:
        slow.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert slow.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 6
        in_flight.join(timeout=5)
        assert slow.outcome and isinstance(slow.outcome[0], AgentUnreachable)  # cut off, not left hanging
        assert "1 request(s) still running after the shutdown grace" in slow.agent.log()
        assert traced(slow.trace_log) == ["after_vdsm_stop"]
    finally:
        wait_for(lambda: (marks / "pid").exists() and (marks / "pid").read_text().strip())
        try:
            os.kill(int((marks / "pid").read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
