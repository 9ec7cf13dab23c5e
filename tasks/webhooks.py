"""mail.webhook: one delivery webhook, on the `callbacks` queue (worker/delivery/webhooks.py decides).

Arguments: the endpoint id, the webhook id (the same on every attempt: the receiver dedupes by it), the
payload, the attempt number and when the first attempt ran; never the secret (the worker opens it from the
store to sign). A retry is the same task published again with a countdown, then this message acknowledged:
at least once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tasks import signals  # noqa: F401  (per-process setup of workers)
from worker.app import CALLBACKS, WEBHOOK_TASK, app
from worker.delivery.webhooks import DEFERRED
from worker.runtime import runtime

log = logging.getLogger(__name__)


@app.task(name=WEBHOOK_TASK, bind=True, acks_late=True)
def deliver_webhook(self: Any, endpoint_id: str, webhook_id: str, payload: dict[str, Any], attempt: int = 1,
                    first_at: float | None = None, deferrals: int = 0) -> dict[str, Any]:  # fmt: skip
    first_at = first_at if first_at is not None else time.time()
    result = runtime().webhook_delivery.run(endpoint_id, webhook_id, payload, attempt, first_at, deferrals)
    if result.action in ("retry", DEFERRED):
        # A deferral (the endpoint paused, or busy with its other deliveries) tried nothing: same attempt.
        deferred = result.action == DEFERRED
        deliver_webhook.apply_async(kwargs={"endpoint_id": endpoint_id, "webhook_id": webhook_id,
                                            "payload": payload, "attempt": attempt if deferred else attempt + 1,
                                            "first_at": first_at, "deferrals": deferrals + 1 if deferred else 0},
                                    countdown=result.delay, queue=CALLBACKS)  # fmt: skip
    if result.action != DEFERRED:
        log.info("webhook %s to %s: %s (attempt %d) %s", webhook_id, endpoint_id, result.action, attempt,
                 result.answer.error if result.answer else "")  # fmt: skip
    return {**result.to_json(), "webhook_id": webhook_id, "attempt": attempt}
