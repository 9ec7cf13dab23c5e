"""The metric families of /metrics, built from the raw figures read at scrape time (pure: no Redis here).

Every figure comes from Redis, not from this process: with many workers on many hosts, any `mailworker serve`
answers the same. A part that could not be read (the broker, the store) is left out and says so in
`mailworker_up{part}`, so a scrape still answers and alerts can tell "zero" from "unknown".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from worker.outcomes.tallies import BUCKETS, INF, Figures

BROKER, STORE = "broker", "store"


@dataclass(frozen=True)
class Scrape:
    """What one scrape read. None: that part could not be read (its families are left out)."""

    now: float
    queues: dict[str, int] | None = None  # queue -> messages waiting
    oldest: dict[str, float | None] = field(default_factory=dict)  # queue -> published at (None: empty)
    webhook_queue: str | None = None  # the webhooks' queue, when the service has one
    jobs: dict[tuple[str, str], int] | None = None  # (realm, outcome) -> jobs (worker/outcomes/record.py)
    tallies: Figures | None = None  # retries, SMTP errors, delivery times, bulk recipients
    breakers: dict[str, bool] | None = None  # realm -> circuit open or half-open


def oldest_age(now: float, published_at: float | None) -> float:
    """Seconds the oldest waiting message has waited; 0 for an empty queue (or a clock ahead of ours)."""
    return 0.0 if published_at is None else max(0.0, round(now - published_at, 3))


def cumulative(per_bucket: dict[str, int]) -> list[tuple[str, float]]:
    """Counts stored per bucket (`le` -> count) as Prometheus's cumulative buckets, +Inf last."""
    bounds = [*(repr(bound) for bound in BUCKETS), INF]
    total, out = 0, []
    for bound in bounds:
        total += per_bucket.get(bound, 0)
        out.append((bound, float(total)))
    return out


def families(scrape: Scrape) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "mailworker_up",
        "1 when this part answered the scrape, else 0 (its metrics are left out)",
        labels=["part"],
    )
    up.add_metric([BROKER], 1.0 if scrape.queues is not None else 0.0)
    up.add_metric([STORE], 1.0 if scrape.jobs is not None else 0.0)
    yield up
    if scrape.queues is not None:
        yield from _queue_families(scrape, scrape.queues)
    if scrape.jobs is not None:
        jobs = CounterMetricFamily(
            "mailworker_jobs", "Jobs (and bulk recipients) by how they ended", labels=["realm", "outcome"]
        )
        for (realm, outcome), count in sorted(scrape.jobs.items()):
            jobs.add_metric([realm, outcome], count)
        yield jobs
    if scrape.tallies is not None:
        yield from _tally_families(scrape.tallies)
    if scrape.breakers is not None:
        breaker = GaugeMetricFamily(
            "mailworker_breaker_open",
            "1 while the realm's circuit breaker is open or half-open (its SMTP server does not answer)",
            labels=["realm"],
        )
        for realm, tripped in sorted(scrape.breakers.items()):
            breaker.add_metric([realm], 1.0 if tripped else 0.0)
        yield breaker


def _queue_families(scrape: Scrape, queues: dict[str, int]) -> Iterator[Metric]:
    depth = GaugeMetricFamily("mailworker_queue_depth", "Messages waiting in the queue", labels=["queue"])
    age = GaugeMetricFamily(
        "mailworker_queue_oldest_age_seconds",
        "How long the queue's oldest waiting message has waited (0 when the queue is empty)",
        labels=["queue"],
    )
    for queue, count in queues.items():
        depth.add_metric([queue], count)
        age.add_metric([queue], oldest_age(scrape.now, scrape.oldest.get(queue)) if count else 0.0)
    backlog = GaugeMetricFamily(
        "mailworker_webhook_backlog", "Webhook deliveries waiting in their queue (0 without webhooks)"
    )
    backlog.add_metric([], queues.get(scrape.webhook_queue, 0) if scrape.webhook_queue else 0)
    yield from (depth, age, backlog)


def _tally_families(tallies: Figures) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        "mailworker_smtp_errors",
        "Failed SMTP attempts by realm and kind of failure",
        labels=["realm", "kind"],
    )
    for (realm, kind), count in sorted(tallies.smtp_errors.items()):
        errors.add_metric([realm, kind], count)
    retries = CounterMetricFamily(
        "mailworker_retries", "Messages re-scheduled after a transient failure", labels=["realm"]
    )
    for realm, count in sorted(tallies.retries.items()):
        retries.add_metric([realm], count)
    delivery = HistogramMetricFamily(
        "mailworker_delivery_seconds", "Time from enqueue to the SMTP server's acceptance", labels=["queue"]
    )
    for queue, per_bucket in sorted(tallies.buckets.items()):
        delivery.add_metric([queue], cumulative(per_bucket), sum_value=tallies.sums.get(queue, 0.0))
    bulk = CounterMetricFamily(
        "mailworker_bulk_recipients", "Bulk recipients by outcome (sent, dead_lettered, cancelled)",
        labels=["realm", "outcome"],
    )  # fmt: skip
    for (realm, outcome), count in sorted(tallies.bulk.items()):
        bulk.add_metric([realm, outcome], count)
    yield from (errors, retries, delivery, bulk)
