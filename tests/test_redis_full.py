"""A full Redis (maxmemory reached, policy noeviction): it refuses every write. The commands an operator
runs then must still answer, and `health` must say it. A private redis-server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer
from worker.cli.health_cmd import FAIL, OK, WARN, memory_check

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@pytest.mark.parametrize(
    "used, maximum, policy, level, says",
    [
        (10 * MIB, 0, "noeviction", OK, "memory 10.0 MiB used (no maxmemory"),
        (10 * MIB, 100 * MIB, "noeviction", OK, "memory 10.0 MiB of 100 MiB (10%), policy noeviction"),
        (85 * MIB, 100 * MIB, "noeviction", WARN, "(85%), policy noeviction: filling up"),
        (10 * MIB, 100 * MIB, "allkeys-lru", WARN, "when full it deletes keys"),
        (96 * MIB, 100 * MIB, "noeviction", FAIL, "(96%), policy noeviction: nearly full"),
        (101 * MIB, 100 * MIB, "noeviction", FAIL, "full: it refuses every write"),
        (99 * MIB, 100 * MIB, "allkeys-lru", FAIL, "nearly full"),
    ],
)
def test_memory_check(used: int, maximum: int, policy: str, level: str, says: str) -> None:
    got_level, text = memory_check("memory", used, maximum, policy)
    assert (got_level, says in text) == (level, True), text


@pytest.fixture
def full_redis() -> Iterator[str]:
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) + 256 * 1024))
        client.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for number in range(100_000):
                client.set(f"filler:{number}", b"x" * 1024)
        client.close()
        yield server.url
    finally:
        server.stop()


def mailworker(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_")}
    env.update(MAILWORKER_STORE_URL=url, MAILWORKER_BROKER_URL=url, MAILWORKER_RESULT_BACKEND=url)
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.integration
def test_stats_answers_and_health_fails_on_a_full_redis(full_redis: str) -> None:
    stats = mailworker(full_redis, "stats", "--json")
    assert stats.returncode == 0, stats.stderr  # queue depths are reads: no transaction, no write
    health = mailworker(full_redis, "health", "--timeout", "2")
    [line] = [line for line in health.stdout.splitlines() if line.split()[1] == "memory"]
    assert line.startswith("FAIL") and "full: it refuses every write" in line
    assert health.returncode == 1
