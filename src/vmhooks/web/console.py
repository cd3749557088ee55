"""The console's listener: the metrics registered as an observer of the
agent, a fresh token published in the run directory, and an HTTP server
bound to `http_listen` (127.0.0.1 unless the admin names another address)."""
from __future__ import annotations

import ipaddress
import logging
import threading

from vmhooks.agent import Agent
from vmhooks.errors import UsageError
from vmhooks.httpserver import limits_of
from vmhooks.web import auth
from vmhooks.web.app import WebApp
from vmhooks.web.metrics import AgentMetrics
from vmhooks.web.server import WebServer

log = logging.getLogger("vmhooks.web")

DEFAULT_HOST = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT`; port 0 takes any free port
    (`vmhooks ui` reads the one taken)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise UsageError(f"--http-listen {text!r} is not PORT or HOST:PORT")
    return host, int(port)


def url_host(host: str) -> str:
    """How a browser on this machine reaches `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class WebConsole:
    def __init__(self, agent: Agent) -> None:
        settings = agent.settings
        assert settings.http_listen is not None
        host, port = parse_listen(settings.http_listen)
        self.agent = agent
        self.metrics = AgentMetrics(agent)
        self.token = auth.new_token()
        try:
            self.server = WebServer((host, port), limits_of(settings))
        except OSError as exc:
            raise UsageError(f"cannot listen on {settings.http_listen} (--http-listen): {exc.strerror}") from None
        self.port = self.server.server_address[1]
        self.address = f"{url_host(host)}:{self.port}"
        self.server.app = WebApp(agent, self.metrics, self.token, self.port, settings.metrics_public)
        try:
            auth.publish(settings.run_dir, self.token, self.address)
        except OSError as exc:
            self.server.server_close()
            raise UsageError(f"cannot write the web console token in {settings.run_dir}: {exc.strerror}") from None
        agent.observers.add(self.metrics)
        if not _loopback(host):
            log.warning(
                "the web console listens on %s over plain HTTP: every page needs the token, "
                "but put it behind a TLS proxy to cross a network", settings.http_listen,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.server.serve_forever, name="web", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop serving (at once, if `httpserver.stop_serving` has not already
        drained it), withdraw the token; the metrics stop counting."""
        self.server.shutdown()
        self.server.server_close()
        auth.withdraw(self.agent.settings.run_dir)
        self.agent.observers.remove(self.metrics)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
