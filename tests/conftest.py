"""Test session wiring: a real Redis (started when none answers), and keys of our own.

Every key this session writes starts with a prefix unique to the session (`mwtest-<random>`), and every
broker key with the same prefix (kombu's global_keyprefix), so parallel runs and the machine's own Redis
data are never touched. At the end only our own keys are deleted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, session_redis_url

SESSION_PREFIX = f"mwtest-{uuid.uuid4().hex[:10]}"
_started_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _started_server
    from cryptography.fernet import Fernet

    url, _started_server = session_redis_url()
    os.environ.update(
        {
            "MAILWORKER_STORE_URL": url,
            "MAILWORKER_BROKER_URL": url,
            "MAILWORKER_RESULT_BACKEND": url,
            "MAILWORKER_KEY_PREFIX": SESSION_PREFIX,
            "MAILWORKER_BROKER_KEY_PREFIX": f"{SESSION_PREFIX}:",
            "MAILWORKER_SECRET_KEY": os.environ.get("MAILWORKER_TEST_SECRET_KEY") or Fernet.generate_key().decode(),
            "MAILWORKER_RESULT_EXPIRES": "900",
        }
    )
    os.environ.pop("MAILWORKER_REALM_TEMPLATES_DIR", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    import redis

    url = os.environ.get("MAILWORKER_STORE_URL")
    if url:
        try:
            client = redis.Redis.from_url(url, socket_timeout=5)
            for key in client.scan_iter(match=f"{SESSION_PREFIX}*", count=1000):
                client.delete(key)
        except redis.RedisError:
            pass
    if _started_server is not None:
        _started_server.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["MAILWORKER_STORE_URL"]


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of this test's own, under the session's prefix."""
    return f"{SESSION_PREFIX}:t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fake_redis() -> object:
    import fakeredis

    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def realm() -> str:
    return f"realm-{uuid.uuid4().hex[:8]}"
