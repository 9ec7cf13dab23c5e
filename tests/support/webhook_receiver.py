"""A webhook receiver on 127.0.0.1 for the tests: a threaded stdlib HTTP server that records every request.

    with WebhookReceiver() as receiver:
        receiver.url                              # http://127.0.0.1:<port>/hooks
        receiver.answer(500, times=2)             # the next 2 requests get 500, then 204 again
        receiver.mode = "hang"                    # hold each request until `release` (or the test ends)
        receiver.mode = "slow"; receiver.delay = 2.0
        receiver.wait_for(lambda r: r.json["type"] == "sent")   # the first matching request, or AssertionError

Each request is kept with its arrival time, headers and body (`Request.json` parses it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.http_stub import JsonHandler, loopback_server


@dataclass(frozen=True)
class Request:
    at: float
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    status: int = 204
    mode: str = "ok"  # ok | slow | hang
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)  # answered (kept when the answer is sent)
    arrivals: int = 0  # requests that arrived, answered or still held
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()
        self._queued: list[int] = []

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.time()
                with receiver._lock:
                    receiver.arrivals += 1
                if receiver.mode == "slow":
                    time.sleep(receiver.delay)
                elif receiver.mode == "hang":
                    receiver.release.wait(120)
                with receiver._lock:
                    status = receiver._queued.pop(0) if receiver._queued else receiver.status
                    receiver.requests.append(Request(arrived, self.path, {k.lower(): v for k, v in
                                                     self.headers.items()}, body, status))  # fmt: skip
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up (its deadline): nothing to answer
                    pass

        self._server, self._thread = loopback_server(Handler, "webhook-receiver")
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def answer(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._queued.extend([status] * times)

    def received(self, match: Callable[[Request], bool] = lambda r: True) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if match(r)]

    def wait_for(
        self, match: Callable[[Request], bool], count: int = 1, timeout: float = 30.0
    ) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(match)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received(match))} of {count} matching webhooks within {timeout}s; "
                             f"got {[r.body[:200] for r in self.received()]}")  # fmt: skip

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
