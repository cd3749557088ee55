"""The console's HTTP server: the agent's bounded serving (`httpserver`:
the connection cap, the request and answer deadlines, strict framing, the
graceful stop), each request handed to `WebApp.handle` and its answer
written back."""
from __future__ import annotations

import logging
import socket
import socketserver

from vmhooks.connections import ServerLimits
from vmhooks.httpserver import BoundedHandler, BoundedServer
from vmhooks.web.app import Request, WebApp

log = logging.getLogger("vmhooks.web")

MAX_BODY = 64 << 10  # the console reads no body; one that is sent is read (and dropped) up to this


class WebHandler(BoundedHandler):
    server: WebServer

    def _serve(self) -> None:
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True
        response = self.server.app.handle(Request(self.command, self.path, self.headers))
        self.respond(response.status, response.body, response.content_type, response.headers)

    # The app answers every method itself (405 for all but reads, with its security headers).
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve  # noqa: N815


class WebServer(BoundedServer, socketserver.TCPServer):
    allow_reuse_address = True
    app: WebApp

    def __init__(self, address: tuple[str, int], limits: ServerLimits) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(limits._replace(max_body=MAX_BODY), "web", address, WebHandler)
