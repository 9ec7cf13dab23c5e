"""Counters summed in the process and written once a second: the stats, outcome and metric totals.

Every delivered message bumps four counters (the realm's hour, the outcome total, the delivery-time bucket
and its sum). Written with each message that is four Redis commands of the fifteen a transactional message
may cost (issue 16); summed here and written by one pipeline a second, it is a few commands a second per
process, whatever the rate. The price: a process killed with SIGKILL loses up to a second of counts
(never mail, never a job's state). A clean exit writes them (`Runtime.close`).

The buffer takes the pipeline commands the counters' writers use (`hincrby`, `hincrbyfloat`, `expire`,
`sadd`), so Stats, Outcomes and Tallies queue onto it as onto a pipeline. `interval` 0 writes at every
`execute()`, as a pipeline would.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

import redis

log = logging.getLogger(__name__)


class CounterBuffer:
    def __init__(self, client: redis.Redis, interval: float) -> None:
        self.redis = client
        self.interval = interval
        self._lock = threading.Lock()
        self._ints: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._floats: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._expire: dict[str, int] = {}
        self._members: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()

    # -- the pipeline commands the counters' writers use --------------------------------------------------

    def hincrby(self, key: str, field: str, amount: int = 1) -> CounterBuffer:
        with self._lock:
            self._ints[(key, field)] += amount
        return self

    def hincrbyfloat(self, key: str, field: str, amount: float = 1.0) -> CounterBuffer:
        with self._lock:
            self._floats[(key, field)] += amount
        return self

    def expire(self, key: str, seconds: int) -> CounterBuffer:
        with self._lock:
            self._expire[key] = seconds
        return self

    def sadd(self, key: str, member: str) -> CounterBuffer:
        with self._lock:
            self._members.add((key, member))
        return self

    def execute(self) -> list[Any]:
        """What a pipeline's execute() is for its callers: written now (interval 0) or within the interval."""
        if self.interval <= 0:
            self.flush()
        else:
            self._ensure_flusher()
        return []

    # -- writing ------------------------------------------------------------------------------------------

    def pending(self) -> bool:
        with self._lock:
            return bool(self._ints or self._floats or self._expire or self._members)

    def flush(self) -> None:
        """Write what was counted in one round trip; on a Redis error the counts stay for the next round."""
        with self._lock:
            ints, floats = dict(self._ints), dict(self._floats)
            expire, members = dict(self._expire), set(self._members)
            self._ints.clear()
            self._floats.clear()
            self._expire.clear()
            self._members.clear()
        if not (ints or floats or expire or members):
            return
        pipe = self.redis.pipeline(transaction=False)
        for (key, field), amount in ints.items():
            pipe.hincrby(key, field, amount)
        for (key, field), value in floats.items():
            pipe.hincrbyfloat(key, field, round(value, 6))
        for key, member in members:
            pipe.sadd(key, member)
        for key, seconds in expire.items():  # after the writes: the key exists
            pipe.expire(key, seconds)
        try:
            pipe.execute()
        except redis.RedisError:
            self._restore(ints, floats, expire, members)
            raise

    def _restore(self, ints: dict[tuple[str, str], int], floats: dict[tuple[str, str], float],
                 expire: dict[str, int], members: set[tuple[str, str]]) -> None:  # fmt: skip
        # A pipeline that failed may have written part of it: a count may be written twice then (counts,
        # never mail); losing all of them on every blip would be worse.
        with self._lock:
            for name, amount in ints.items():
                self._ints[name] += amount
            for name, value in floats.items():
                self._floats[name] += value
            for key, seconds in expire.items():
                self._expire.setdefault(key, seconds)
            self._members |= members

    def _ensure_flusher(self) -> None:
        import os

        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own: threads do not survive a fork
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="mailworker-counters", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except redis.RedisError as error:  # Redis restarting: the counts wait for the next round
                log.warning("writing counters failed (kept for the next round): %s", error)
            except Exception:  # a bug here must not end the flushing
                log.exception("writing counters failed")

    def close(self) -> None:
        """A clean exit: write what is left (best effort: Redis may be gone)."""
        self._stop.set()
        try:
            self.flush()
        except redis.RedisError as error:
            log.warning("counters of the last second not written at exit: %s", error)
