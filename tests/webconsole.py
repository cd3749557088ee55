"""An agent in-process on libvirt's test driver with its web console on a
free loopback port, and a plain HTTP client for it (http.client: no
redirect followed, no cookie kept, every header visible).

Import the fixture into a test module: `from webconsole import web`."""
from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from vmhooks.agent import Agent
from vmhooks.config import AgentSettings
from vmhooks.web import open_console
from vmhooks.web.console import WebConsole


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class Web(NamedTuple):
    agent: Agent
    console: WebConsole

    @property
    def token(self) -> str:
        return self.console.token

    def request(self, path: str, *, token: str | None = None, method: str = "GET",
                headers: Mapping[str, str] | None = None, body: bytes | None = None) -> Answer:  # fmt: skip
        """`token` goes in an Authorization header; none is sent without it."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.console.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Answer:
        """GET with the console's own token."""
        return self.request(path, token=self.token, **kwargs)


def recorded_runs(page: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every run of a history page (`Agent.history`, `Host.getHookHistory`),
    oldest first, with its chain's id and point."""
    return [
        {"chain": chain["id"], "point": chain["point"], **run}
        for operation in page["operations"] for chain in operation["chains"] for run in chain["runs"]
    ]  # fmt: skip


def start_web(root: Path, hooks_dir: Path, **settings: Any) -> Web:
    values: dict[str, Any] = {
        "libvirt_uri": "test:///default", "hooks_dir": hooks_dir, "state_dir": root / "state",
        "run_dir": root / "run", "hook_timeout": 10, "http_listen": "127.0.0.1:0",
    }  # fmt: skip
    values.update(settings)
    agent = Agent(AgentSettings(**values))
    console = open_console(agent)
    agent.start()
    console.serve_in_thread()
    return Web(agent, console)


def stop_web(web: Web) -> None:
    web.console.close()
    web.agent.stop()


@pytest.fixture
def web(tmp_path: Path, hooks_dir: Path) -> Iterator[Web]:
    instance = start_web(tmp_path, hooks_dir)
    try:
        yield instance
    finally:
        stop_web(instance)
