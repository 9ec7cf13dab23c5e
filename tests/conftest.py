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

from tests.support.browser import chromium, page  # noqa: F401 (fixtures: the console's browser tests)
from tests.support.redis_server import RedisServer, session_redis_url
from tests.support.smtp_server import SmtpTestServer, session_ca, smtp_server_fixture

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
            "MAILWORKER_SECRET_KEY": os.environ.get("MAILWORKER_TEST_SECRET_KEY")
            or Fernet.generate_key().decode(),
            "MAILWORKER_RESULT_EXPIRES": "900",
            # The workers of the test session trust the test CA that signs the test SMTP servers.
            "MAILWORKER_SMTP_CA_FILE": session_ca().ca_file,
            # Fast retries, so "451 twice then delivered" takes a second, not a minute.
            "MAILWORKER_RETRY_BASE_DELAY": "0.2",
            "MAILWORKER_RETRY_MAX_DELAY": "1",
            "MAILWORKER_MAX_ATTEMPTS": "4",
            "MAILWORKER_RECIPIENT_COOLDOWN": "0",
            # Counters written with each count, so a test reads them right after a job (the buffer's own
            # behaviour is tested in tests/test_counter_buffer.py).
            "MAILWORKER_COUNTER_FLUSH_INTERVAL": "0",
            # A save is seen by the very next message (config/recent.py is tested in tests/test_recent.py).
            "MAILWORKER_REALM_CACHE_SECONDS": "0",
            # The token endpoints of the tests listen on 127.0.0.1 (http): allowed only with this.
            "MAILWORKER_ALLOW_PRIVATE_URLS": "1",
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


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A plain SMTP server on loopback (aiosmtpd), recording what it receives."""
    yield from smtp_server_fixture()


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[object]:
    """A real Celery worker on the session's Redis broker, in a thread of the test process.

    One for the whole session (Celery keeps worker state in module globals: two at once interfere).
    It consumes every queue; the reliability tests start real worker processes instead.
    """
    from celery.contrib.testing.worker import start_worker

    from worker.app import QUEUES, app

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=list(QUEUES),
                      loglevel="WARNING", shutdown_timeout=30) as worker:  # fmt: skip
        yield worker


@pytest.fixture
def store() -> object:
    from worker.runtime import runtime

    return runtime().store


@pytest.fixture(scope="session")
def api() -> Iterator[object]:
    """The real HTTP app on a real uvicorn server on 127.0.0.1 (tests/support/http.py)."""
    from tests.support.http import serve
    from worker.http.app import create_app
    from worker.runtime import runtime

    # Every test calls from 127.0.0.1: the failed-sign-in limit would let one test's 401s refuse the next
    # test's calls. tests/test_http_core.py lowers it again where it is the subject.
    settings = runtime().settings.model_copy(update={"http_auth_failures_per_minute": 10_000})
    yield from serve(create_app(settings))


@pytest.fixture
def producer_token() -> str:
    from tests.support.http import new_token

    return new_token("producer")


@pytest.fixture
def admin_token() -> str:
    from tests.support.http import new_token

    return new_token("admin")
