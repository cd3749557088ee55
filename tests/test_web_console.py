"""The console's listener: the address it binds, and a bind that fails."""
from __future__ import annotations

import socket

import pytest
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
