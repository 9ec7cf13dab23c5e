"""The HTTP app in tests: a real uvicorn server on 127.0.0.1 serving the real app (the session's Redis and
key prefix, its worker when a test asks for `celery_worker`), and API tokens to call it with.

    def test_x(api: ApiServer, producer_token: str) -> None:
        reply = api.client(producer_token).post("/v1/realms/acme/emails", json={...})
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn


@dataclass
class ApiServer:
    url: str  # http://127.0.0.1:<port>
    app: Any  # the FastAPI app it serves (app.state.context: settings, token and session stores)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def serve(app: Any) -> Iterator[ApiServer]:
    """Run `app` on a free port of 127.0.0.1 in a thread until the generator is closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test API server did not start"
        time.sleep(0.02)
    try:
        yield ApiServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def new_token(scope: str, realms: tuple[str, ...] = (), name: str = "test") -> str:
    from worker.http.tokens import TokenStore
    from worker.runtime import runtime

    rt = runtime()
    return TokenStore(rt.redis, rt.keys).create(scope, list(realms), name).token
