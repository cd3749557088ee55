"""The console's listener is the agent's bounded server: its connection
cap, its request deadline and its graceful stop, over real sockets."""
from __future__ import annotations

import socket
import time

from agentproc import wait_for
from webconsole import start_web, stop_web

from vmhooks.httpserver import stop_serving


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`, or None if it stayed open."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_the_console_has_the_cap_the_deadline_and_the_graceful_stop(tmp_path, hooks_dir):
    web = start_web(tmp_path, hooks_dir, max_connections=2, request_timeout=1)
    address = ("127.0.0.1", web.console.port)
    try:
        trickle = socket.create_connection(address, timeout=10)
        trickle.sendall(b"GET / HTTP/1.1\r\n")
        idle = socket.create_connection(address, timeout=10)
        wait_for(lambda: len(web.console.server.connections) == 2)
        over = socket.create_connection(address, timeout=10)
        answer = closed_within(over, 2)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503 ")  # at once, no thread
        started = time.monotonic()
        for sock in (trickle, idle):
            assert closed_within(sock, 5) is not None  # no whole request within 1 s
        assert time.monotonic() - started < 4
        kept = socket.create_connection(address, timeout=10)
        wait_for(lambda: len(web.console.server.connections) == 1)
        assert stop_serving([web.console.server], grace=5) == []
        assert closed_within(kept, 2) is not None  # no request in flight: closed at once
        for sock in (trickle, idle, over, kept):
            sock.close()
    finally:
        stop_web(web)
