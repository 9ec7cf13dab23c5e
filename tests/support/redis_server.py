"""A Redis for the test session: the one on 127.0.0.1:6379 when it answers, else our own redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class RedisServer:
    """A redis-server process we own (started daemonized, stopped with SHUTDOWN NOSAVE)."""

    port: int = field(default_factory=free_port)
    appendonly: bool = False
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mw-redis-")))
    options: tuple[str, ...] = ()  # more redis-server arguments (`--replicaof`, `--appendfsync always`)

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / "redis.pid").read_text().strip())
        return None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        subprocess.run(
            [
                binary,
                "--daemonize",
                "yes",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.directory),
                "--pidfile",
                str(self.directory / "redis.pid"),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.options,
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        with contextlib.suppress(redis.RedisError):  # SHUTDOWN closes the connection under us
            redis.Redis(port=self.port, socket_timeout=2).shutdown(nosave=not self.appendonly)
        deadline = time.monotonic() + 10
        while answers(self.url) and time.monotonic() < deadline:
            time.sleep(0.05)


def session_redis_url() -> tuple[str, RedisServer | None]:
    """The URL tests use, and the server we started for them (None when one already answered)."""
    configured = os.environ.get("MAILWORKER_TEST_REDIS_URL")
    if configured:
        return configured, None
    default = "redis://127.0.0.1:6379/0"
    if answers(default):
        return default, None
    server = RedisServer().start()
    return server.url, server
