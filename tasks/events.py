"""mail.event: map an IAM event to its notice and deliver it in the same task."""

from __future__ import annotations

import logging
from typing import Any

from config.errors import InvalidInput, NotFound
from tasks.runner import run_job
from worker.app import app
from worker.events import event_job, parse_event
from worker.runtime import runtime

log = logging.getLogger(__name__)


@app.task(name="mail.event", bind=True, acks_late=True)
def handle_event(self: Any, realm: str, event: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = parse_event(event)
        _, settings = runtime().services.cache.get(realm)
        job = event_job(realm, parsed, settings.notify_events, allow_utf8=settings.allow_utf8)
    except (InvalidInput, NotFound) as error:
        # Validated at publish time already; this only happens when the realm changed in between.
        log.warning("event for realm %s not deliverable: %s", realm, error)
        runtime().pending.done(self.request.id)
        return {"status": "rejected", "job_id": self.request.id, "error": str(error)}
    if job is None:
        log.debug("event %s of realm %s does not notify", parsed.type, realm)
        runtime().pending.done(self.request.id)
        return {"status": "ignored", "job_id": self.request.id, "event_type": parsed.type}
    return run_job(self, job.model_copy(update={"id": self.request.id}))
