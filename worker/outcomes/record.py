"""Recording outcomes: the realm's hourly counters (`mailworker stats`) and the all-time totals the metrics
read (`mailworker_jobs_total{realm,outcome}`), summed in the process and written once a second
(buffer.py); then the delivery
webhooks the realm's endpoints subscribed to (none, without a round trip, for a realm without endpoints).

Totals live in Redis, not in the process: with many worker processes on many hosts, any HTTP server reads
the same figures (a per-process registry would lose them with each restart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from config.keys import Keys
from worker.jobs.stats import Stats
from worker.outcomes.buffer import CounterBuffer
from worker.outcomes.outcome import STAT_NAMES, Outcome

log = logging.getLogger(__name__)

TOTAL_SEPARATOR = "\t"  # realm names never hold one (config/names.py)


class Outcomes:
    def __init__(
        self, redis: Any, keys: Keys, stats: Stats, counters: CounterBuffer | None = None,
        notify: Callable[[Outcome], Any] | None = None,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.keys = keys
        self.stats = stats
        # Where the counts go: summed in the process and written once a second (buffer.py), or, without a
        # buffer, written with each outcome.
        self.counters = counters
        # The webhooks' fan-out (worker/outcomes/webhooks/fanout.py): after the counts, so a broker that
        # does not answer cannot lose them.
        self.notify = notify

    def record(self, outcome: Outcome, also: Callable[[Any], Any] | None = None) -> None:
        """Count the outcome (and `also(pipe)`: more counters of the same ending), then its webhooks."""
        pipe = self.counters if self.counters is not None else self.redis.pipeline(transaction=False)
        if also is not None:
            also(pipe)
        name = STAT_NAMES.get(outcome.event)
        if name is not None:
            self.stats.queue_count(pipe, outcome.realm, name, outcome.count)
        pipe.hincrby(
            self.keys.outcome_totals(), f"{outcome.realm}{TOTAL_SEPARATOR}{outcome.event}", outcome.count
        )
        pipe.execute()
        if self.notify is not None:
            # The mail's own ending must not fail (and be retried: sent twice) because its webhook could
            # not be queued: said at ERROR, the webhook is lost.
            try:
                self.notify(outcome)
            except Exception:
                log.exception("webhooks for %s of job %s not queued", outcome.event, outcome.job_id)

    def totals(self) -> dict[tuple[str, str], int]:
        """{(realm, outcome): count} since the store began (for /metrics)."""
        totals = {}
        for field, value in self.redis.hgetall(self.keys.outcome_totals()).items():
            realm, _, event = str(field).partition(TOTAL_SEPARATOR)
            totals[(realm, event)] = int(value)
        return totals
