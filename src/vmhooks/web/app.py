"""The console's requests and answers, apart from any server: the token
check, the routes (every one a read: GET or HEAD, nothing else), and the
headers every answer carries, the Content-Security-Policy first."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from vmhooks.agent import Agent
from vmhooks.errors import UsageError, VmhooksError
from vmhooks.points import POINTS
from vmhooks.web import auth, pages, source
from vmhooks.web.metrics import AgentMetrics
from vmhooks.web.render import render

log = logging.getLogger("vmhooks.web")

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
# Scripts and styles from our own files only: no inline script, no inline
# style, nothing from elsewhere, no framing, no form posting elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
READ_METHODS = ("GET", "HEAD")
VM_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # what an id in a URL may be; the agent's are UUIDs


class Request(NamedTuple):
    method: str
    target: str  # the request line's path and query
    headers: auth.Headers


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = HTML
    headers: tuple[tuple[str, str], ...] = ()


class NoSuchPageError(Exception):
    """No such page: a 404."""


class WebApp:
    def __init__(self, agent: Agent, metrics: AgentMetrics, token: str, port: int, metrics_public: bool = False) -> None:
        self.agent = agent
        self.metrics = metrics
        self.token = token
        self.port = port
        self.metrics_public = metrics_public
        self.routes: list[tuple[re.Pattern[str], Callable[..., Response]]] = [
            (re.compile(r"/"), self.vms),
            (re.compile(r"/vms/(?P<vm_id>[^/]+)"), self.timeline),
            (re.compile(r"/hooks"), self.hooks),
            (re.compile(r"/host"), self.host),
            (re.compile(r"/metrics"), self.metrics_text),
            (re.compile(r"/api/stamp"), self.stamp),
            (re.compile(r"/static/(?P<name>[a-z.]+)"), self.static),
        ]

    def handle(self, request: Request) -> Response:
        response = self._answer(request)
        return response._replace(headers=SECURITY_HEADERS + response.headers)

    def _answer(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            return Response(405, b"this console only reads: GET or HEAD\n", TEXT, (("Allow", ", ".join(READ_METHODS)),))
        parts = urlsplit(request.target)
        path, query = parts.path or "/", parts.query
        if not (path == "/metrics" and self.metrics_public):
            decision = auth.authorize(path, query, request.headers, self.token, self.port)
            if decision.verdict is auth.Verdict.DENIED:
                return self._denied(path)
            if decision.verdict is auth.Verdict.REDIRECT:
                return Response(303, b"", TEXT, (("Location", decision.location), ("Set-Cookie", decision.set_cookie)))
        for pattern, view in self.routes:
            match = pattern.fullmatch(path)
            if match:
                try:
                    return view(request, parse_qs(query), **match.groupdict())
                except NoSuchPageError:
                    break
                except VmhooksError as exc:
                    return self._page(500, "error.html", title="Error", message=str(exc))
                except Exception:
                    log.exception("web console: %s failed", path)
                    return self._page(500, "error.html", title="Error", message=f"internal error on {path} (see the agent's log)")
        return self._page(404, "error.html", title="Not found", message=f"no page at {path}")

    def _denied(self, path: str) -> Response:
        headers = (("WWW-Authenticate", 'Bearer realm="vmhooks"'),)
        if path.startswith(("/api/", "/metrics", "/static/")):
            return Response(401, b"a token is required (vmhooks ui prints the URL with it)\n", TEXT, headers)
        response = self._page(401, "denied.html", title="Token required")
        return response._replace(headers=headers)

    def _page(self, status: int, template: str, **context: object) -> Response:
        return Response(status, render(template, **context))

    # -- pages -------------------------------------------------------------------

    def vms(self, request: Request, query: dict[str, list[str]]) -> Response:
        return self._page(200, "vms.html", title="VMs", stamp=source.stamp(self.agent), **pages.vms_page(self.agent))

    def timeline(self, request: Request, query: dict[str, list[str]], vm_id: str) -> Response:
        if not VM_ID.fullmatch(vm_id):
            raise NoSuchPageError(vm_id)
        key = vm_id.lower()
        point, status = _one(query, "point"), _one(query, "status")
        if status and status not in pages.STATUS_FILTERS:
            status = ""
        before_text = _one(query, "before")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
        if point not in POINTS:
            point = ""  # an unknown filter is dropped, as the status's
        try:
            timeline = pages.timeline_page(self.agent, key, point, status, before)
        except UsageError:  # not a VM id the agent could have
            raise NoSuchPageError(vm_id) from None
        if timeline.vm is None and not timeline.operations and before is None and not (point or status):
            raise NoSuchPageError(vm_id)
        title = timeline.vm.name if timeline.vm is not None and timeline.vm.name else key
        return self._page(
            200, "timeline.html", title=f"{title}: timeline", stamp=source.stamp(self.agent), t=timeline,
            status_filters=pages.STATUS_FILTERS,
        )  # fmt: skip

    def hooks(self, request: Request, query: dict[str, list[str]]) -> Response:
        return self._page(200, "hooks.html", title="Hooks", stamp=source.stamp(self.agent), **pages.hooks_page(self.agent))

    def host(self, request: Request, query: dict[str, list[str]]) -> Response:
        return self._page(200, "host.html", title="Host", stamp=source.stamp(self.agent), **pages.host_page(self.agent))

    # -- machine-readable -----------------------------------------------------------

    def metrics_text(self, request: Request, query: dict[str, list[str]]) -> Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept"))
        return Response(200, body, content_type)

    def stamp(self, request: Request, query: dict[str, list[str]]) -> Response:
        return Response(200, json.dumps({"stamp": source.stamp(self.agent)}).encode(), JSON)

    def static(self, request: Request, query: dict[str, list[str]], name: str) -> Response:
        content_type = STATIC.get(name)
        if content_type is None:
            raise NoSuchPageError(name)
        return Response(200, (resources.files("vmhooks.web") / "static" / name).read_bytes(), content_type)


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key) or [""]
    return values[-1][:200]
