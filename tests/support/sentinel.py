"""A Redis Sentinel group on loopback for the failover scenario: a master (AOF), a replica, three sentinels.

Every process binds and announces 127.0.0.1. The sentinels notice a dead master after `down_after_ms` and
promote the replica; `failover()` waits until they all name the new master.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, answers, free_port

MASTER_NAME = "mailworker"


@dataclass
class SentinelGroup:
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mw-sentinel-")))
    master: RedisServer | None = None
    replica: RedisServer | None = None
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Celery's form: every sentinel, `;`-separated, the database on the first."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    @classmethod
    @contextlib.contextmanager
    def start(cls, **kwargs: int) -> Iterator[SentinelGroup]:
        group = cls(**kwargs)
        try:
            group._start()
            yield group
        finally:
            group.stop()

    def _start(self) -> None:
        durable = ("--appendfsync", "always", "--replica-announce-ip", "127.0.0.1")
        self.master = RedisServer(appendonly=True, options=durable).start()
        self.replica = RedisServer(
            appendonly=True, options=(*durable, "--replicaof", "127.0.0.1", str(self.master.port))
        ).start()
        self._wait(lambda: self._link_up(), "the replica did not sync with the master")
        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        for i in range(3):
            port = free_port()
            conf = self.directory / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize yes\ndir {self.directory}\n"
                f"pidfile {self.directory}/sentinel-{i}.pid\nlogfile {self.directory}/sentinel-{i}.log\n"
                "sentinel announce-ip 127.0.0.1\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            subprocess.run([binary, str(conf), "--sentinel"], check=True)
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            self._wait(lambda p=port: answers(f"redis://127.0.0.1:{p}"), f"sentinel on {port} did not start")
        # Each sentinel must know the replica and the other sentinels before a failover can be agreed.
        self._wait(self._sentinels_ready, "the sentinels did not discover the replica and each other", 30)

    def master_port(self, sentinel_port: int) -> int | None:
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis(port=sentinel_port, socket_timeout=1, decode_responses=True)
            found = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            return int(found[1]) if found else None
        return None

    def replica_lag_bytes(self) -> int:
        """How far the replica's copy is behind the master: the master's offset, then the replica's own
        (the replica reports its offset to the master once a second only: asked directly, it is current)."""
        assert self.master is not None and self.replica is not None
        written = int(
            redis.Redis(port=self.master.port, socket_timeout=1).info("replication")["master_repl_offset"]
        )
        copied = int(
            redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")["slave_repl_offset"]
        )
        return max(0, written - copied)

    def kill_master(self) -> None:
        """SIGKILL: no AOF flush beyond what `appendfsync always` already wrote, no goodbye to the replica."""
        assert self.master is not None
        pid = self.master.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def promoted(self) -> bool:
        """All three sentinels name the replica as the master, and it accepts writes."""
        assert self.replica is not None
        if any(self.master_port(port) != self.replica.port for port in self.sentinel_ports):
            return False
        with contextlib.suppress(redis.RedisError):
            role = redis.Redis(port=self.replica.port, socket_timeout=1).execute_command("ROLE")
            return bool(role) and role[0] in (b"master", "master")
        return False

    def stop(self) -> None:
        for i in range(len(self.sentinel_ports)):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.directory / f"sentinel-{i}.pid").read_text().strip()), signal.SIGKILL)
        for server in (self.replica, self.master):
            if server is not None:
                pid = server.pid()
                with contextlib.suppress(OSError, TypeError):
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]

    def _link_up(self) -> bool:
        assert self.replica is not None
        with contextlib.suppress(redis.RedisError):
            info = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
            return info.get("master_link_status") == "up"
        return False

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            try:
                client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
                state = client.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError(what)
            time.sleep(0.1)
