"""`vmhooks serve` as an admin runs it: where its run directory goes, and
the lines it logs at start and stop (terminal, journal, JSON)."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import VMHOOKS, AgentProcess, domain_xml

import vmhooks
from vmhooks import __version__
from vmhooks.client import Client
from vmhooks.errors import VmhooksError
from vmhooks.web import auth


class Serve:
    """`vmhooks serve ARGS` with its stderr in a file; stopped by SIGTERM."""

    def __init__(self, root: Path, hooks_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = root / f"serve-{uuid.uuid4().hex[:6]}.log"
        self.socket = Path(args[args.index("--socket") + 1])
        command = [*VMHOOKS, "serve", "--config", os.devnull, "--hooks-dir", str(hooks_dir),
                   "--state-dir", str(root / f"state-{self.socket.stem}"), *args]  # fmt: skip
        with open(self.log_path, "wb") as log:
            # The journal is recognised by the device and inode of stderr: this log file's.
            st = os.fstat(log.fileno())
            extra = {key: value.format(stderr=f"{st.st_dev}:{st.st_ino}") for key, value in (env or {}).items()}
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env={**os.environ, **extra})  # fmt: skip
        self.client = Client(self.socket, timeout=60)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log()}")
            try:
                self.client.call("VM.list")
                break
            except VmhooksError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.05)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log()
        return self.log()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()


def test_a_socket_alone_gets_its_own_run_dir(tmp_path: Path, hooks_dir: Path, serves: list[Serve]):
    both = tmp_path / "agents"
    for name in ("a", "b"):
        serves.append(Serve(tmp_path, hooks_dir, "--socket", str(both / f"{name}.sock")))
    for serve in serves:
        vm_id = str(uuid.uuid4())
        serve.client.call("VM.create", xml=domain_xml(f"vm-{serve.socket.stem}", vm_id), launchPaused=True)
        run_dir = serve.socket.with_name(f"{serve.socket.stem}.run")
        assert (run_dir / "payloads").is_dir() and (run_dir / "launch-flags").is_dir()
        assert f", run {run_dir}, API on {serve.socket}" in serve.log()
    assert sorted(os.listdir(both)) == ["a.run", "a.sock", "b.run", "b.sock"]
    explicit = Serve(tmp_path, hooks_dir, "--socket", str(tmp_path / "c.sock"), "--run-dir", str(tmp_path / "run-c"))
    serves.append(explicit)
    assert (tmp_path / "run-c" / "payloads").is_dir() and not (tmp_path / "c.run").exists()


def test_start_and_stop_lines_on_a_terminal(tmp_path: Path, hooks_dir: Path, serves: list[Serve]):
    serve = Serve(tmp_path, hooks_dir, "--socket", str(tmp_path / "t.sock"))
    serves.append(serve)
    lines = [line for line in serve.stop().splitlines() if " INFO vmhooks: " in line]
    assert len(lines) == 2
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO vmhooks: vmhooks {re.escape(__version__)} started: "
        rf"libvirt test:///default, hooks {hooks_dir}, state {tmp_path}/state-t, run {tmp_path}/t.run, "
        rf"API on {tmp_path}/t.sock",
        lines[0],
    ), lines[0]
    assert re.fullmatch(r"\S+ \S+ INFO vmhooks: vmhooks stopped after [\d.]+ (s|ms)", lines[1]), lines[1]


def test_under_systemd_the_journal_gets_priorities_and_no_timestamps(tmp_path: Path, hooks_dir: Path, serves: list[Serve]):
    serve = Serve(tmp_path, hooks_dir, "--socket", str(tmp_path / "j.sock"), "--log-level", "DEBUG",
                  env={"JOURNAL_STREAM": "{stderr}"})  # fmt: skip
    serves.append(serve)
    assert serve.client.call("VM.list") == []
    lines = serve.stop().splitlines()
    assert lines and all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), lines
    assert any(line.startswith(f"<6>INFO vmhooks: vmhooks {__version__} started: libvirt test:///default")
               for line in lines)  # fmt: skip
    assert lines[-1].startswith("<6>INFO vmhooks: vmhooks stopped after ")
    assert any(line.startswith("<7>DEBUG ") for line in lines)


def test_json_log_lines_for_log_shippers(tmp_path: Path, hooks_dir: Path, serves: list[Serve]):
    serve = Serve(tmp_path, hooks_dir, "--socket", str(tmp_path / "s.sock"), "--log-format", "json")
    serves.append(serve)
    entries = [json.loads(line) for line in serve.stop().splitlines()]
    start = next(entry for entry in entries if entry.get("event") == "start")
    assert start["level"] == "INFO" and start["version"] == __version__
    assert start["libvirt_uri"] == "test:///default" and start["hooks_dir"] == str(hooks_dir)
    assert start["listen"] == [str(tmp_path / "s.sock")] and start["run_dir"] == str(tmp_path / "s.run")
    stop = entries[-1]
    assert stop["event"] == "stop" and stop["uptime_s"] > 0 and stop["message"].startswith("vmhooks stopped after")


def test_a_bad_setting_under_systemd_is_an_error_in_the_journal(tmp_path: Path, hooks_dir: Path):
    log_path = tmp_path / "err.log"
    with open(log_path, "wb") as log:
        st = os.fstat(log.fileno())
        done = subprocess.run([*VMHOOKS, "serve", "--config", os.devnull, "--hook-timeout", "0"], stderr=log,
                              env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert log_path.read_text() == "<3>vmhooks: hook timeout must be a positive number of seconds\n"


# -- the web console (--http-listen) ------------------------------------------------


def test_http_listen_publishes_a_private_token_and_withdraws_it(tmp_path: Path, hooks_dir: Path):
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--http-listen", "127.0.0.1:0").start()
    try:
        token_file = agent.run_dir / auth.TOKEN_FILE
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token, address = auth.read_published(agent.run_dir)
        request = urllib.request.Request(f"http://{address}/host", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and b"test:///default" in answer.read()
        assert f"http://{address}/ (web console" in agent.log()
    finally:
        assert agent.stop() == 0
    assert not token_file.exists()


def test_http_listen_without_the_web_extra_is_one_line(tmp_path: Path, hooks_dir: Path):
    # jinja2 made unimportable, as on a host where only vmhooks was installed.
    code = "import sys; sys.modules['jinja2'] = None; from vmhooks.cli import main; sys.exit(main(sys.argv[1:]))"
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--http-listen", "127.0.0.1:0")
    command = [sys.executable, "-c", code, *agent.command()[len(VMHOOKS) :]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "vmhooks: --http-listen needs the web console's packages: pip install 'vmhooks[web]' (missing: Jinja2)"
    )
    assert not (agent.run_dir / "vmhooks.sock").exists()  # nothing left serving


def test_the_agent_and_the_cli_never_load_an_extras_packages():
    # gRPC (the kubevirt extra), Jinja2 and prometheus_client (the web extra): the
    # agent's own dependencies stay libvirt-python, unless --http-listen asks.
    code = (
        "import sys, vmhooks.cli, vmhooks.agent, vmhooks.api, vmhooks.runner, vmhooks.store\n"
        "from vmhooks.cli import build_parser; build_parser()\n"
        "extras = ('grpc', 'google', 'jinja2', 'markupsafe', 'prometheus_client')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in extras)\n"
        "loaded += [m for m in ('vmhooks.kubevirt.server', 'vmhooks.web.app') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_nothing_below_imports_the_web_package():
    package = Path(vmhooks.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "vmhooks.web" in path.read_text() and path.relative_to(package).parts[0] != "web"
    )
    assert importers == ["commands/serve.py", "commands/ui.py"]


ARENAS_PROBE = """
import ctypes, sys, threading
from vmhooks.commands.serve import _bound_allocator_arenas
_bound_allocator_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
kept = []
threads = [threading.Thread(target=lambda: kept.extend(libc.malloc(2000) for _ in range(100))) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


@pytest.mark.parametrize(("environment", "most"), [({}, 2), ({"MALLOC_ARENA_MAX": "1"}, 1)])
def test_the_agent_keeps_glibcs_malloc_arenas_few(environment, most):
    """Every connection has a thread; by default glibc gives 8 threads 8 more arenas."""
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"} | environment
    probe = subprocess.run([sys.executable, "-c", ARENAS_PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    arenas = [line for line in probe.stderr.splitlines() if line.startswith("Arena ")]
    assert 1 <= len(arenas) <= most, probe.stderr
