"""Per-realm counters by clock hour (sent, dead, dropped, ...): what `mailworker stats` shows."""

from __future__ import annotations

import time
from typing import Any

import redis

from config.keys import Keys

KEEP_HOURS = 48
# The hour's key gets its expiry, and the realm its place in the realms' set, once per this many seconds
# per process rather than with every count: two Redis commands a message saved. Renewed that often, so a
# count whose pipeline failed, or a set an operator cleared, is set right within a minute.
MARK_EVERY_S = 60.0


def epoch_hour(now: float | None = None) -> int:
    return int((now if now is not None else time.time()) // 3600)


class Stats:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._marked: dict[str, float] = {}  # hour key -> when this process last set its expiry and realm

    def count(self, realm: str, outcome: str, n: int = 1) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.queue_count(pipe, realm, outcome, n)
        pipe.execute()

    def queue_count(self, pipe: Any, realm: str, outcome: str, n: int = 1) -> None:
        """The commands of `count` on a pipeline the caller executes (with its own, in one round trip)."""
        now = time.time()
        key = self.keys.stats(realm, epoch_hour(now))
        pipe.hincrby(key, outcome, n)
        if now - self._marked.get(key, -MARK_EVERY_S) >= MARK_EVERY_S:
            if len(self._marked) > 1000:  # hours gone by: their keys are never written again
                self._marked.clear()
            self._marked[key] = now
            pipe.expire(key, KEEP_HOURS * 3600)
            pipe.sadd(self.keys.stats_realms(), realm)

    def last_hour(self, realm: str, now: float | None = None) -> dict[str, int]:
        """Counts of the current and the previous clock hour, weighted to cover the last 60 minutes."""
        now = now if now is not None else time.time()
        hour = epoch_hour(now)
        current = {str(k): int(v) for k, v in self.redis.hgetall(self.keys.stats(realm, hour)).items()}
        previous = {str(k): int(v) for k, v in self.redis.hgetall(self.keys.stats(realm, hour - 1)).items()}
        share_of_previous = 1 - (now % 3600) / 3600
        return {
            name: current.get(name, 0) + round(previous.get(name, 0) * share_of_previous)
            for name in sorted(set(current) | set(previous))
        }

    def hourly(
        self, realm: str, hours: int = 24, now: float | None = None
    ) -> list[tuple[int, dict[str, int]]]:
        """(epoch hour, counts) of the last `hours` clock hours, oldest first, the current one last."""
        hours = max(1, min(hours, KEEP_HOURS))
        last = epoch_hour(now)
        pipe = self.redis.pipeline(transaction=False)
        for hour in range(last - hours + 1, last + 1):
            pipe.hgetall(self.keys.stats(realm, hour))
        counts = [{str(k): int(v) for k, v in found.items()} for found in pipe.execute()]
        return list(zip(range(last - hours + 1, last + 1), counts, strict=True))

    def realms(self) -> list[str]:
        return sorted(str(r) for r in self.redis.smembers(self.keys.stats_realms()))
