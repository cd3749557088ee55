"""The console's HTTP server: one thread per connection, each request
handed to `WebApp.handle` and its answer written back."""
from __future__ import annotations

import http.server
import logging
import socket
import socketserver
from typing import Any

from vmhooks.web.app import Request, WebApp

log = logging.getLogger("vmhooks.web")

REQUEST_TIMEOUT = 30.0  # seconds a client may take to send its request


class WebHandler(http.server.BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"
    server_version = "vmhooks"
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s", format % args)

    def _serve(self) -> None:
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a body we will not read may follow
        response = self.server.app.handle(Request(self.command, self.path, self.headers))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve  # noqa: N815


class WebServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    app: WebApp

    def __init__(self, address: tuple[str, int]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, WebHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which may block on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
