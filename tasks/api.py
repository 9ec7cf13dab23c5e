"""What producers import. Everything is validated here, before anything reaches Redis.

    from tasks import api
    job_id = api.send_email("acme", "password-reset", "alice@example.com",
                            context={"user": {...}, "link": "https://...", "link_expiration": 5})
    api.wait_for_result(job_id)          # {"status": "sent", "message_id": ..., ...}

No secret ever travels in a task argument: the worker reads the realm's settings from the store.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.result import AsyncResult

from config.errors import InvalidInput
from config.smtp import SmtpSettings
from worker.app import TRANSACTIONAL, app
from worker.events import event_job, event_template, parse_event
from worker.jobs import EmailJob, check_context, check_realm, new_job
from worker.render import TEMPLATE_NAMES
from worker.runtime import runtime

log = logging.getLogger(__name__)


def _realm_settings(realm: str) -> SmtpSettings:
    check_realm(realm)
    saved = runtime().store.saved(realm)
    if saved is None:
        raise InvalidInput.one("realm", f"{realm} has no saved SMTP settings (mailworker settings save --realm {realm})")
    return saved.settings


def _check_template(realm: str, template: str) -> None:
    if not runtime().renderer.exists(realm, template):
        known = ", ".join(TEMPLATE_NAMES)
        raise InvalidInput.one("template", f"unknown template {template!r}; known: {known}")


def send_email(
    realm: str,
    template: str,
    to: str,
    *,
    locale: str | None = None,
    context: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    expires_in: float | None = None,
    to_name: str | None = None,
) -> str:
    """Enqueue one e-mail on the transactional queue; returns the job id (also the Celery task id)."""
    settings = _realm_settings(realm)
    if not isinstance(template, str):
        raise InvalidInput.one("template", "must be a string")
    job = new_job(
        realm, template, to, locale=locale, context=context, idempotency_key=idempotency_key,
        expires_in=expires_in, to_name=to_name, allow_utf8=settings.allow_utf8,
    )  # fmt: skip
    _check_template(realm, job.template)
    if job.idempotency_key is not None and runtime().services.ledger.delivered(job.id) is not None:
        return job.id  # this key was delivered already: the same job, nothing new to send
    app.send_task("mail.send", args=[job.model_dump(mode="json")], task_id=job.id, queue=TRANSACTIONAL)
    return job.id


def publish_event(realm: str, event: dict[str, Any]) -> str | None:
    """Enqueue the notice for an IAM event; None when the realm does not notify this event type."""
    settings = _realm_settings(realm)
    parsed = parse_event(event)
    check_context(event, field="event")  # it travels as is in the broker message
    job = event_job(realm, parsed, settings.notify_events, allow_utf8=settings.allow_utf8)
    if job is None:
        log.debug("event %s of realm %s does not notify: ignored", parsed.type, realm)
        return None
    if not runtime().renderer.exists(realm, event_template(parsed.type)):
        log.warning("event %s of realm %s notifies but has no template %s: ignored",
                    parsed.type, realm, event_template(parsed.type))  # fmt: skip
        return None
    app.send_task("mail.event", args=[realm, event], task_id=job.id, queue=TRANSACTIONAL)
    return job.id


def result(job_id: str) -> AsyncResult:
    return AsyncResult(job_id, app=app)


def wait_for_result(job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Block until the job ended (sent, dead-lettered, skipped) and return its result."""
    value = result(job_id).get(timeout=timeout, propagate=True)
    if not isinstance(value, dict):
        raise TypeError(f"job {job_id} returned {value!r}")
    return value


def requeue_dead_letter(job_id: str) -> str:
    """Send a dead job again, with a fresh attempt count; it leaves the dead-letter store once enqueued."""
    rt = runtime()
    letter = rt.dead_letters.get(job_id)
    job = EmailJob.model_validate(letter.job).model_copy(update={"requeued": letter.job.get("requeued", 0) + 1})
    rt.services.ledger.reset_attempts(job.id)
    result(job.id).forget()  # the dead result must not answer for the new attempt
    app.send_task("mail.send", args=[job.model_dump(mode="json")], task_id=job.id, queue=TRANSACTIONAL)
    rt.dead_letters.remove(job.id)
    return job.id
