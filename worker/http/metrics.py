"""GET /metrics: Prometheus's text format, for a bearer token of scope admin not limited to realms.

The figures cover every realm, so a token limited to some realms gets 403 (Prometheus sends the token with
`authorization: {credentials_file: ...}`; docs/metrics.md). A custom collector reads Redis at scrape time:
queue depths and ages from the broker, outcome totals, the metrics' counters and the breakers from the store.
A part that does not answer is left out and reported in `mailworker_up{part}`: the endpoint still answers
200 while the broker is down, which is when an operator needs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from config import names
from config.settings import ServiceSettings
from tasks.stats import queue_depths
from worker.http.auth import admin
from worker.http.context import context_of
from worker.http.errors import ApiError
from worker.http.metric_families import Scrape, families
from worker.http.tokens import ApiToken
from worker.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

# The webhooks' queue (config/names.py); its depth is the webhook backlog.
WEBHOOK_QUEUE = names.CALLBACKS


def read(rt: Runtime, settings: ServiceSettings, now: float | None = None) -> Scrape:
    """Everything one scrape shows, read from the broker and the store; a part that fails is None."""
    now = time.time() if now is None else now
    queues, oldest = None, {}
    try:
        found = queue_depths(settings, oldest=True)
        queues, oldest = found["queues"], found["oldest"]
    except Exception as error:  # the broker is down or misconfigured: say so in mailworker_up
        log.warning("/metrics: the broker did not answer: %s", error)
    jobs = tallies = breakers = None
    try:
        jobs = rt.outcomes.totals()
        tallies = rt.tallies.read()
        breakers = rt.breaker.tripped(rt.store.realms())
    except Exception as error:  # the store is down: the counters are unknown, not zero
        log.warning("/metrics: the store did not answer: %s", error)
        jobs = tallies = breakers = None
    webhooks = WEBHOOK_QUEUE if queues is not None and WEBHOOK_QUEUE in queues else None
    return Scrape(now, queues, oldest, webhooks, jobs, tallies, breakers)


class ScrapeCollector(Collector):
    """Reads Redis when Prometheus scrapes (never a figure kept in this process)."""

    def __init__(self, rt: Runtime, settings: ServiceSettings) -> None:
        self.rt = rt
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from families(read(self.rt, self.settings))


@router.get(
    "/metrics",
    summary="Prometheus metrics: queues, jobs by outcome, SMTP errors, retries, delivery times, breakers",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request, token: ApiToken = Depends(admin)) -> Response:  # noqa: B008
    if token.realms:
        raise ApiError(403, "the metrics cover every realm: a token not limited to realms is needed")
    context = context_of(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(context.runtime, context.settings))
    # The classic text format (0.0.4): every Prometheus reads it, and no name here needs 1.0.0's escaping.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
