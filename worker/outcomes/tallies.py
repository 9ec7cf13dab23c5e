"""What /metrics counts beside the outcome totals: retries, SMTP errors by kind, and the time from enqueue to
the server's acceptance as histogram buckets, all-time counters in one Redis hash (`Keys.metric_totals`).

The commands go onto a pipeline the caller executes with its own (the `queue_*` methods, as
`Stats.queue_count`): the sent path gains no round trip. A bulk chunk collects its figures in a `Batch` and
writes them once, at the end of its run. Labels stay bounded: realms, queues, `Kind` values and the fixed
buckets, never a job id or an address.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from config.keys import Keys
from worker.smtp.failures import Kind, SmtpFailure

SEP = "\t"  # realm, queue and kind names never hold one (config/names.py, Kind)
RETRY, SMTP_ERROR, DELIVERY, DELIVERY_SUM, BULK = "retry", "smtp_error", "delivery", "delivery_sum", "bulk"
# Seconds from enqueue to acceptance. A mail that goes at once takes well under a second; one that waited
# for retries takes minutes to an hour (the backoff), so the buckets reach that far.
BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
INF = "+Inf"


def bucket_of(seconds: float) -> str:
    """The `le` bound of the smallest bucket holding `seconds` (stored per bucket, summed up at scrape time)."""
    index = bisect.bisect_left(BUCKETS, seconds)
    return INF if index == len(BUCKETS) else repr(BUCKETS[index])


def smtp_kind(failure: BaseException) -> Kind | None:
    """The SMTP failure behind a delivery failure (raised while handling it), or None: not the server's."""
    cause = failure if isinstance(failure, SmtpFailure) else failure.__cause__ or failure.__context__
    return cause.kind if isinstance(cause, SmtpFailure) else None


@dataclass
class Batch:
    """Figures collected in memory over a bulk chunk's run, written in one round trip at its end."""

    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # Kind value -> count
    delays: list[tuple[float, int]] = field(default_factory=list)  # (seconds, messages)
    recipients: Counter[str] = field(default_factory=Counter)  # bulk recipients by outcome: sent, ...

    def error(self, failure: BaseException, n: int = 1) -> None:
        kind = smtp_kind(failure)
        if kind is not None:
            self.errors[kind.value] += n


@dataclass(frozen=True)
class Figures:
    """The hash read back: retries per realm, SMTP errors per (realm, kind), buckets per queue."""

    retries: dict[str, int] = field(default_factory=dict)
    smtp_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: dict[str, dict[str, int]] = field(default_factory=dict)  # queue -> {le: count in that bucket}
    sums: dict[str, float] = field(default_factory=dict)  # queue -> seconds
    bulk: dict[tuple[str, str], int] = field(default_factory=dict)  # (realm, outcome) -> bulk recipients


def parse(raw: dict[str, str]) -> Figures:
    """The hash's fields as figures; a field of another shape (a newer writer's) is skipped."""
    figures = Figures()
    for name, value in raw.items():
        what, *labels = name.split(SEP)
        if what == RETRY and len(labels) == 1:
            figures.retries[labels[0]] = int(value)
        elif what == SMTP_ERROR and len(labels) == 2:
            figures.smtp_errors[(labels[0], labels[1])] = int(value)
        elif what == DELIVERY and len(labels) == 2:
            figures.buckets.setdefault(labels[0], {})[labels[1]] = int(value)
        elif what == DELIVERY_SUM and len(labels) == 1:
            figures.sums[labels[0]] = float(value)
        elif what == BULK and len(labels) == 2:
            figures.bulk[(labels[0], labels[1])] = int(value)
    return figures


class Tallies:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.metric_totals()

    def queue_retry(self, pipe: Any, realm: str, n: int = 1) -> None:
        pipe.hincrby(self.key, f"{RETRY}{SEP}{realm}", n)

    def queue_smtp_error(self, pipe: Any, realm: str, kind: str, n: int = 1) -> None:
        pipe.hincrby(self.key, f"{SMTP_ERROR}{SEP}{realm}{SEP}{kind}", n)

    def queue_delivery(self, pipe: Any, queue: str, seconds: float, n: int = 1) -> None:
        """`n` messages accepted `seconds` after their enqueue (a clock step backwards counts as 0)."""
        seconds = max(0.0, seconds)
        pipe.hincrby(self.key, f"{DELIVERY}{SEP}{queue}{SEP}{bucket_of(seconds)}", n)
        pipe.hincrbyfloat(self.key, f"{DELIVERY_SUM}{SEP}{queue}", round(seconds * n, 3))

    def failed_attempt(self, realm: str, failure: BaseException, *, retry: bool) -> Any:
        """The commands for one failed attempt, for a pipeline the caller runs (`also=` of the ledger)."""
        kind = smtp_kind(failure)

        def queue(pipe: Any) -> None:
            if retry:
                self.queue_retry(pipe, realm)
            if kind is not None:
                self.queue_smtp_error(pipe, realm, kind.value)

        return queue

    def count_failure(self, realm: str, failure: BaseException) -> None:
        """An attempt that failed for good: its SMTP error kind, if the server's (none: no round trip)."""
        if smtp_kind(failure) is not None:
            pipe = self.redis.pipeline(transaction=False)
            self.failed_attempt(realm, failure, retry=False)(pipe)
            pipe.execute()

    def write(self, realm: str, queue: str, batch: Batch) -> None:
        """A bulk chunk's figures, in one round trip (none when there is nothing to count)."""
        if not (batch.retries or batch.errors or batch.delays or +batch.recipients):
            return
        pipe = self.redis.pipeline(transaction=False)
        for outcome, n in (+batch.recipients).items():
            pipe.hincrby(self.key, f"{BULK}{SEP}{realm}{SEP}{outcome}", n)
        if batch.retries:
            self.queue_retry(pipe, realm, batch.retries)
        for kind, n in batch.errors.items():
            self.queue_smtp_error(pipe, realm, kind, n)
        for seconds, n in batch.delays:
            self.queue_delivery(pipe, queue, seconds, n)
        pipe.execute()

    def read(self) -> Figures:
        return parse({str(k): str(v) for k, v in self.redis.hgetall(self.key).items()})
