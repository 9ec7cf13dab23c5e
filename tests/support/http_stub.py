"""What the tests' small HTTP servers share (the token endpoint, the stand-in Keycloak, the webhook
receiver): a handler that answers JSON and logs nothing, a threaded server on a free port of 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    def reply(self, status: int, body: Any) -> None:
        """`body` as JSON (bytes as they are), with its length."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # the test's output stays the test's
        pass


def loopback_server(
    handler: type[BaseHTTPRequestHandler], name: str
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A server on 127.0.0.1 (a free port) and the thread that serves it, not started yet."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    return server, thread
