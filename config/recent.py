"""Facts read from Redis and trusted for a moment: a realm's settings version, its circuit breaker, its
suppression list, the producer's realm check.

Each of those is one Redis command per message when read every time; trusted for a second, it is one per
realm and second per process, whatever the rate (issue 16: at most 15 commands per transactional message).
The price is a second: a save, a breaker opened by another process or a new suppression is seen within
`MAILWORKER_REALM_CACHE_SECONDS` (1 s) instead of by the very next message. 0 reads every time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_ENTRIES = 10_000  # realms are few; a flood of names (a bug, an attack) must not grow it without end


class Recent(Generic[K, V]):
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, read: Callable[[], V], keep: Callable[[V], bool] = lambda value: True) -> V:
        """The value read less than `seconds` ago, else `read()` (kept only when `keep(value)`)."""
        if self.seconds > 0:
            now = self.clock()
            found = self._entries.get(key)
            if found is not None and now - found[0] < self.seconds:
                return found[1]
        value = read()
        if self.seconds > 0 and keep(value):
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = (self.clock(), value)
        return value

    def forget(self, key: K) -> None:
        """This process changed it: read it again next time."""
        with self._lock:
            self._entries.pop(key, None)
