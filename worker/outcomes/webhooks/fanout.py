"""From a recorded outcome to the webhook deliveries it calls for: one message per subscribed endpoint on
the `callbacks` queue, carrying the endpoint id, the webhook id and the payload (never the secret: the
worker opens it from the store when it signs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.outcomes.outcome import Outcome
from worker.outcomes.webhooks.decisions import payload, subscribed, wanted, webhook_id
from worker.outcomes.webhooks.endpoints import EndpointCache

# (endpoint id, webhook id, payload) -> published; worker/runtime.py passes the Celery publish.
Publish = Callable[[str, str, dict[str, Any]], None]


class Fanout:
    def __init__(self, cache: EndpointCache, publish: Publish) -> None:
        self.cache = cache
        self.publish = publish

    def __call__(self, outcome: Outcome) -> int:
        """How many deliveries were queued."""
        if not wanted(outcome):
            return 0
        endpoints = subscribed(self.cache.for_realm(outcome.realm), outcome.event)
        for endpoint in endpoints:
            self.publish(endpoint.id, webhook_id(endpoint.id, outcome), payload(outcome))
        return len(endpoints)
