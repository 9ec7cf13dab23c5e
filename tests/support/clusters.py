"""Worker processes (tests/reliability/harness.py) on the test session's Redis, under a test's own prefix.

The reliability scenarios start a private redis-server per cluster; tests about what the processes say or
show (logs, Celery events) need no private server, and stopping one takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.harness import Cluster


@dataclass
class SessionRedis:
    """The test session's Redis in place of a private redis-server."""

    url: str

    def stop(self) -> None:
        pass  # the session's, not ours: our keys, under the test's prefix, go with the session's


@contextmanager
def session_cluster(redis_url: str, key_prefix: str, tmp: Path) -> Iterator[Cluster]:
    """A Cluster whose workers are stopped (and connections closed) on the way out."""
    found = Cluster(SessionRedis(redis_url), key_prefix, tmp)  # type: ignore[arg-type]
    try:
        yield found
    finally:
        for worker in found.workers:
            worker.stop()
        found.close()
