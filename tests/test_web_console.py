"""The console's listener and its place in `vmhooks serve`: the address it
binds, the optional extra, the token files of a real agent process."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import urllib.request

import pytest
from agentproc import VMHOOKS, AgentProcess
from webconsole import start_web

from vmhooks.errors import UsageError
from vmhooks.web import auth
from vmhooks.web.console import parse_listen, url_host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),  # a port alone: loopback
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", ":8080", "host:", "host:http", "host:65536", "host:-1", "１２３"])
def test_bad_listen_addresses_are_one_line(text):
    with pytest.raises(UsageError, match="--http-listen .* is not PORT or HOST:PORT"):
        parse_listen(text)


def test_wildcard_hosts_are_reached_on_loopback():
    assert url_host("0.0.0.0") == "127.0.0.1"
    assert url_host("::") == "[::1]"
    assert url_host("::1") == "[::1]"
    assert url_host("192.0.2.7") == "192.0.2.7"


def test_a_port_in_use_is_one_clear_error(tmp_path, hooks_dir):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(UsageError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(--http-listen\)"):
            start_web(tmp_path, hooks_dir, http_listen=f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert not (tmp_path / "run" / auth.TOKEN_FILE).exists()


def test_serve_with_http_listen_publishes_a_private_token_and_withdraws_it(tmp_path, hooks_dir):
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default", "--http-listen", "127.0.0.1:0").start()
    try:
        token_file = agent.run_dir / auth.TOKEN_FILE
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token, address = auth.read_published(agent.run_dir)
        request = urllib.request.Request(f"http://{address}/host", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and b"test:///default" in answer.read()
        assert "web console on http://127.0.0.1:" in agent.log()
    finally:
        assert agent.stop() == 0
    assert not token_file.exists()


def test_serve_without_the_web_extra_says_so_in_one_line(tmp_path, hooks_dir):
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
