"""When to retry a failed delivery, and how long to wait: pure decisions, tested as tables."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Decision(Enum):
    RETRY = "retry"
    DEAD_EXHAUSTED = "exhausted"
    DEAD_EXPIRED = "expired"
    DEAD_AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff until the job's link expires, or for `max_age` seconds when it has none.

    An outage of the provider (451 to everything for ten minutes) must not kill mail that could still be
    delivered: MTAs keep trying for days, identity mail is stale after about a day, and a link mail is
    worth sending until its link dies.
    """

    max_attempts: int = 0  # 0: no limit by count, only by time
    base_delay: float = 5.0
    max_delay: float = 300.0
    max_age: float = 86_400.0
    # A retry landing this close to the link's expiry is not worth it: the user would open a dead link.
    min_useful_life: float = 10.0
    # Attempts whose data went out without a reply: each may have delivered a copy. After this many the job
    # stops, with a dead letter that says the mail may have arrived (bounds the copies to this many).
    max_ambiguous: int = 2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter ("equal jitter": half fixed, half random) after `attempt` failures.

        The random half spreads retries of many jobs that failed together (a server back from an outage).
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(max(attempt - 1, 0), 60))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def decide(
        self,
        attempt: int,
        *,
        now: float,
        created_at: float,
        expires_at: float | None,
        delay: float,
        ambiguous: int = 0,
    ) -> tuple[Decision, float]:
        """After failed attempt number `attempt` (1-based): retry after the returned delay, or stop and why.

        The delay is shortened so that the last retry still lands while the link is alive.
        """
        if ambiguous >= self.max_ambiguous:
            return Decision.DEAD_AMBIGUOUS, 0.0
        if self.max_attempts and attempt >= self.max_attempts:
            return Decision.DEAD_EXHAUSTED, 0.0
        deadline = expires_at if expires_at is not None else created_at + self.max_age
        useful = deadline - self.min_useful_life - now
        if useful <= 0:
            # A reset link delivered after it expired is useless, even harmful: stop instead.
            return (Decision.DEAD_EXPIRED if expires_at is not None else Decision.DEAD_EXHAUSTED), 0.0
        return Decision.RETRY, max(0.0, min(delay, useful))
