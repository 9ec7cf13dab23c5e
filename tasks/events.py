"""mail.event: map an IAM event to its notice and deliver it in the same task; an event that names its user
only by id is completed first by a look-up in the IAM (tasks/runner.py `look_up_user`)."""

from __future__ import annotations

import logging
from typing import Any

from config.errors import InvalidInput, NotFound, StoreUnavailable
from tasks.outcomes import DeadLettered
from tasks.runner import CELERY_RETRY_LIMIT, look_up_user, run_job
from tasks.tracked import TrackedJob
from templates.catalogue import event_template
from worker.app import EVENT_TASK, app
from worker.jobs.events import event_job, needs_lookup, parse_event
from worker.runtime import runtime

log = logging.getLogger(__name__)


@app.task(name=EVENT_TASK, base=TrackedJob, bind=True, acks_late=True, throws=(DeadLettered,))
def handle_event(self: Any, realm: str, event: dict[str, Any]) -> dict[str, Any]:
    rt = runtime()
    try:
        parsed = parse_event(event)
        _, settings = rt.services.cache.get(realm)
        if needs_lookup(parsed) and parsed.type in settings.notify_events:
            parsed = look_up_user(self, realm, event, parsed, settings, event_template(parsed.type))
        job = event_job(realm, parsed, settings.notify_events, allow_utf8=settings.allow_utf8)
    except StoreUnavailable as error:
        # The store lost its settings (wiped, not restored yet): wait for an admin, as a send job does.
        log.warning("event for realm %s waits: %s", realm, error)
        raise self.retry(countdown=rt.settings.retry_max_delay, max_retries=CELERY_RETRY_LIMIT) from None
    except (InvalidInput, NotFound) as error:
        # Validated at publish time already; this only happens when the realm changed in between.
        log.warning("event for realm %s not deliverable: %s", realm, error)
        return _ended(
            self.request.id, realm, {"status": "rejected", "job_id": self.request.id, "error": str(error)}
        )
    if job is None:
        log.debug("event %s of realm %s does not notify", parsed.type, realm)
        return _ended(
            self.request.id,
            realm,
            {"status": "ignored", "job_id": self.request.id, "event_type": parsed.type},
        )
    return run_job(self, job.model_copy(update={"id": self.request.id}))


def _ended(job_id: str, realm: str, result: dict[str, Any]) -> dict[str, Any]:
    result["realm"] = realm
    rt = runtime()
    rt.ledger.end(job_id, result["status"])  # a late copy (or the sweeper) finds it ended
    return result  # the pending ledger forgets it once the result is stored (TrackedJob)
