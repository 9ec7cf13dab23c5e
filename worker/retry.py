"""When to retry a failed delivery, and how long to wait: pure decisions, tested as tables."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Decision(Enum):
    RETRY = "retry"
    DEAD_EXHAUSTED = "exhausted"
    DEAD_EXPIRED = "expired"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 5.0
    # Every delay stays below the broker's visibility timeout (ServiceSettings checks): a longer
    # countdown makes Redis hand the same message to a second worker while the first still holds it.
    max_delay: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter ("equal jitter": half fixed, half random) after `attempt` failures.

        The random half spreads retries of many jobs that failed together (a server back from an outage).
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(attempt - 1, 0))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def decide(self, attempt: int, *, now: float, expires_at: float | None, delay: float) -> Decision:
        """After failed attempt number `attempt` (1-based): retry, or give up and why."""
        if attempt >= self.max_attempts:
            return Decision.DEAD_EXHAUSTED
        if expires_at is not None and now + delay >= expires_at:
            # A reset link delivered after it expired is useless, even harmful: stop instead.
            return Decision.DEAD_EXPIRED
        return Decision.RETRY
