"""What producers import. Everything is validated here, before anything reaches Redis.

    from tasks import api
    job_id = api.send_email("acme", "password-reset", "alice@example.com",
                            context={"user": {...}, "link": "https://...", "link_expiration": 5})
    api.wait_for_result(job_id)          # {"status": "sent", "message_id": ..., ...}

No secret ever travels in a task argument: the worker reads the realm's settings from the store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery.result import AsyncResult
from pydantic import ValidationError

from config.epoch import store_empty_error
from config.errors import InvalidInput
from config.names import check_locale, check_template_name
from tasks.connection import test_connection  # noqa: F401  (re-exported: callers find it with the rest)
from tasks.waiting import POLL_S, require_worker, wait_result
from templates.catalogue import DEFAULT_NOTIFY_EVENTS, TEMPLATE_NAMES, event_template
from worker.app import (
    BULK,
    BULK_CHUNK_TASK,
    BULK_START_TASK,
    CALLBACKS,
    EVENT_TASK,
    SEND_TASK,
    TRANSACTIONAL,
    WEBHOOK_TASK,
    app,
)
from worker.bulk.recipients import DEFAULT_CHUNK_SIZE
from worker.jobs.events import event_job, event_job_id, ignored_because, needs_lookup, parse_event
from worker.jobs.lanes import LATER, lane_for
from worker.jobs.model import (
    EmailJob,
    check_context,
    check_line,
    check_links,
    check_realm,
    new_job,
)
from worker.runtime import runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealmFacts:
    """What a producer needs to know of a realm's settings: no secret, so no MAILWORKER_SECRET_KEY."""

    allow_utf8: bool
    notify_events: tuple[str, ...]


def _realm_settings(realm: str) -> RealmFacts:
    check_realm(realm)
    store = runtime().store
    # Trusted for a moment (config/recent.py): a producer sending a thousand jobs reads it once a second.
    fields = runtime().recent_realms.get(
        realm, lambda: store.saved_fields(realm), keep=lambda f: f is not None
    )
    if fields is None:
        if store.epoch() is None:
            # Not the caller's mistake: the store is empty (wiped, or never configured). Retryable.
            raise store_empty_error(store.wipe())
        raise InvalidInput.one(
            "realm", f"{realm} has no saved SMTP settings (mailworker settings save --realm {realm})"
        )
    return RealmFacts(
        allow_utf8=bool(fields.get("allow_utf8", False)),
        notify_events=tuple(fields.get("notify_events") or DEFAULT_NOTIFY_EVENTS),
    )


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
    if job.idempotency_key is not None and not _reopen(job.id):
        return job.id  # this key was delivered already: the same job, nothing new to send
    _publish_tracked(SEND_TASK, [job.model_dump(mode="json")], job.id, lane_for(job.expires_at, time.time()))
    return job.id


def _reopen(job_id: str) -> bool:
    """An idempotency key sent again: False when its job was delivered; else it may run again (a job
    dropped by the cooldown or dead-lettered earlier is sent when its producer asks again)."""
    ledger = runtime().ledger
    if ledger.delivered(job_id) is not None:
        return False
    if ledger.state(job_id) is not None:
        ledger.reset(job_id)
        result(job_id).forget()  # its earlier end must not answer for this run: status is the latest truth
    return True


def _publish_tracked(
    task: str, args: list[Any], job_id: str, lane: int, *, queue: str = TRANSACTIONAL
) -> None:
    """Publish the job, then record it in the pending ledger: a job the broker loses is published again
    by a worker's sweeper (worker/jobs/pending.py).

    In this order so that a producer killed in between leaves nothing behind that would be sent later
    behind its back (a job it never returned an id for); a job that ended before it was recorded is
    recognised as ended by the sweeper.
    """
    app.send_task(task, args=args, task_id=job_id, queue=queue, priority=lane)
    runtime().pending.track(job_id, task, args, queue, lane)


def publish_event(realm: str, event: dict[str, Any], *, idempotency_key: str | None = None) -> str | None:
    """Enqueue the notice for an IAM event; None when the realm does not notify this event type.

    `idempotency_key` (else the event's own `id`) makes publishing the same event twice one job. An event
    that names its user only by id (`userId`, no address) is completed by the worker, which looks the user
    up in the IAM (worker/delivery/iam_users.py).
    """
    return submit_event(realm, event, idempotency_key=idempotency_key).job_id


@dataclass(frozen=True)
class EventOutcome:
    job_id: str | None  # None: nothing to send
    ignored: str | None = None  # why nothing is sent (worker.jobs.events.ignored_because)


def submit_event(realm: str, event: dict[str, Any], *, idempotency_key: str | None = None) -> EventOutcome:
    """`publish_event` saying why an event sends nothing: the HTTP API answers the producer with it."""
    return submit_events(realm, [event], idempotency_key=idempotency_key)[0]


def submit_events(realm: str, events: list[Any], *, idempotency_key: str | None = None) -> list[EventOutcome]:
    """`submit_event` for several events (Keycloak's webhook posts arrays): every event is checked before
    any is enqueued; a bad one rejects the call, its field prefixed with its index (`[2].event.type`) when
    there are several."""
    settings = _realm_settings(realm)
    if idempotency_key is not None:
        check_line("idempotency_key", idempotency_key, max_length=200)
    plans = []
    for index, event in enumerate(events):
        # One key names one job: with several events, each gets the key and its index.
        key = idempotency_key if idempotency_key is None or len(events) == 1 else f"{idempotency_key}:{index}"
        try:
            plans.append(_plan_event(realm, settings, event, key))
        except InvalidInput as error:
            if len(events) == 1:
                raise
            raise InvalidInput([(f"[{index}].{field}", rule) for field, rule in error.problems]) from None
    for event, (outcome, lane) in zip(events, plans, strict=True):
        if outcome.job_id is not None:
            _publish_tracked(EVENT_TASK, [realm, event], outcome.job_id, lane)
    return [outcome for outcome, _ in plans]


def _plan_event(
    realm: str, settings: RealmFacts, event: Any, idempotency_key: str | None
) -> tuple[EventOutcome, int]:
    """(what becomes of the event, its lane): checked, nothing enqueued yet."""
    parsed = parse_event(event)
    check_context(event, field="event")  # it travels as is in the broker message
    notified = parsed.type in settings.notify_events
    has_template = notified and runtime().renderer.exists(realm, event_template(parsed.type))
    ignored = ignored_because(realm, parsed.type, settings.notify_events, has_template)
    if ignored is not None:
        # A type the realm does not notify is normal (debug); one it notifies without a template is not.
        (log.warning if notified else log.debug)("event of realm %s ignored: %s", realm, ignored)
        return EventOutcome(None, ignored), LATER
    if needs_lookup(parsed):  # the worker finds the address first; a notice has no link to expire
        return EventOutcome(event_job_id(realm, parsed, idempotency_key)), LATER
    job = event_job(realm, parsed, settings.notify_events, allow_utf8=settings.allow_utf8,
                    idempotency_key=idempotency_key)  # fmt: skip
    assert job is not None  # notified: checked above
    return EventOutcome(job.id), lane_for(job.expires_at, time.time())


def result(job_id: str) -> AsyncResult:
    return AsyncResult(job_id, app=app)


def wait_for_result(job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Block until the job ended (sent, dead-lettered, skipped) and return its result.

    Raises WorkerUnavailable at once (and while waiting) when no live worker serves the transactional
    queue: the job stays queued and is sent once a worker runs. TimeoutError after `timeout` seconds.
    """
    value = wait_result(result(job_id), timeout, TRANSACTIONAL)
    if not isinstance(value, dict):
        raise TypeError(f"job {job_id} returned {value!r}")
    return value


def requeue_dead_letter(job_id: str) -> str:
    """Send a dead job again, with a fresh attempt count; it leaves the dead-letter store once enqueued."""
    rt = runtime()
    letter = rt.dead_letters.get(job_id)
    if letter.task == "ingest":  # worker/ingest.py: an entry that never became a job
        raise InvalidInput.one(
            "job_id",
            f"{job_id} is an ingest entry that never became a job: push it again (fix the producer, "
            "or report an `internal` error)",
        )
    if letter.task == WEBHOOK_TASK:  # a delivery webhook its receiver refused for a day: a fresh day of tries
        _requeue_webhook(letter.job, job_id)
        rt.dead_letters.remove(job_id)
        return job_id
    event = letter.job.get("event") if letter.task == EVENT_TASK and isinstance(letter.job, dict) else None
    if isinstance(event, dict):  # an event whose user look-up failed: published again as the event it was
        rt.ledger.reset(job_id)
        result(job_id).forget()
        _publish_tracked(EVENT_TASK, [letter.realm, event], job_id, LATER)
        rt.dead_letters.remove(job_id)
        return job_id
    try:
        job = EmailJob.model_validate(letter.job).model_copy(
            update={"requeued": int(letter.job.get("requeued", 0)) + 1}
        )
    except (ValidationError, TypeError, ValueError, AttributeError):
        # Written by hand or by an older version: nothing here can be sent again as it is.
        raise InvalidInput.one(
            "job_id", f"dead letter {job_id} holds no job that can be sent again; purge it (`dead purge`)"
        ) from None
    rt.ledger.reset(job.id)
    result(job.id).forget()  # the dead result must not answer for the new attempt
    # Back to the queue it came from: a bulk recipient's mail goes to the bulk workers (and their pace),
    # not ahead of every password reset.
    queue = BULK if letter.task == BULK_CHUNK_TASK else TRANSACTIONAL
    lane = LATER if queue == BULK else lane_for(job.expires_at, time.time())
    _publish_tracked(SEND_TASK, [job.model_dump(mode="json")], job.id, lane, queue=queue)
    rt.dead_letters.remove(job.id)
    return job.id


def _requeue_webhook(job: Any, job_id: str) -> None:
    keys = ("endpoint_id", "webhook_id", "payload")
    if not isinstance(job, dict) or any(k not in job for k in keys):
        raise InvalidInput.one(
            "job_id", f"dead letter {job_id} holds no webhook that can be sent again; purge it"
        )
    runtime().webhooks.get(str(job["endpoint_id"]))  # NotFound when the endpoint was removed meanwhile
    # Not tracked in the pending ledger: that is for mail jobs; a webhook message lost with the broker's
    # data is lost like the webhooks queued with it.
    app.send_task(WEBHOOK_TASK, kwargs={k: job[k] for k in keys}, queue=CALLBACKS)


# ---- bulk ------------------------------------------------------------------------------------------------

# Chunks written to Redis per round trip while the recipients stream in.
_CHUNKS_PER_WRITE = 20


def send_bulk(
    realm: str,
    template: str,
    recipients: Iterable[Any],
    *,
    context: dict[str, Any] | None = None,
    locale: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> str:
    """Send `template` to every recipient on the bulk queue; returns the bulk job id at once.

    `recipients`: any iterable (a generator over 100,000 database rows is fine) of addresses, or of dicts
    {"email", "name"?, "locale"?, "context"?}. A recipient's context is merged over the job's `context`;
    its locale wins over the job's `locale`. The whole call is rejected, naming the first bad recipient
    (`recipients[17].email: not a valid address: ...`): nothing is sent and nothing is left in Redis.
    The recipients go to Redis in chunks; broker messages carry only the job id and a chunk number.
    """
    from worker.bulk.progress import BULK_JOB_PREFIX
    from worker.bulk.recipients import MAX_CHUNK_SIZE, chunked

    settings = _realm_settings(realm)
    check_template_name(template)
    _check_template(realm, template)
    context = check_context(context)
    check_links(context)
    check_locale("locale", locale)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not 1 <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise InvalidInput.one("chunk_size", f"must be a whole number from 1 to {MAX_CHUNK_SIZE}")
    if isinstance(recipients, str | bytes | dict) or not isinstance(recipients, Iterable):
        raise InvalidInput.one(
            "recipients", "must be a list (or any iterable) of addresses or recipient dicts"
        )
    job_id = f"{BULK_JOB_PREFIX}{uuid.uuid4().hex}"
    jobs = runtime().bulk_jobs
    jobs.create(job_id, realm=realm, template=template, locale=locale, context=context, chunk_size=chunk_size)
    written, total, pending = 0, 0, []
    try:
        for chunk in chunked(recipients, chunk_size, allow_utf8=settings.allow_utf8):
            if total == 0:
                _check_bulk_render(realm, template, locale, context, chunk[0])
            pending.append(chunk)
            total += len(chunk)
            if len(pending) == _CHUNKS_PER_WRITE:
                jobs.write_chunks(job_id, written, pending)
                written, pending = written + len(pending), []
        if pending:
            jobs.write_chunks(job_id, written, pending)
            written, pending = written + len(pending), []
        if total == 0:
            raise InvalidInput.one("recipients", "is empty: name at least one recipient")
    except BaseException:
        jobs.discard(job_id, written + len(pending))
        raise
    jobs.open(job_id, total=total, chunks=written)
    app.send_task(BULK_START_TASK, args=[job_id], task_id=job_id, queue=BULK)
    runtime().pending.track(job_id, BULK_START_TASK, [job_id], BULK)  # the fan-out is covered as well
    log.info("bulk job %s: %d recipients in %d chunks for realm %s", job_id, total, written, realm)
    return job_id


def _check_bulk_render(realm: str, template: str, locale: str | None, context: dict[str, Any],
                       first: dict[str, Any]) -> None:  # fmt: skip
    """Render for the first recipient now: a missing variable is the caller's error, not 100,000 dead letters."""
    from worker.content.render import RenderError

    try:
        runtime().renderer.render(
            realm, template, first.get("locale") or locale, {**context, **first.get("context", {})}
        )
    except RenderError as error:
        raise InvalidInput.one("context", str(error)) from None


def bulk_progress(job_id: str) -> dict[str, Any]:
    """{total, sent, failed, cancelled, pending, rate, state, started_at, finished_at, ...} of a bulk job."""

    return runtime().bulk_jobs.progress(job_id).to_dict()


def cancel_bulk(job_id: str) -> str:
    """Stop a bulk job: recipients not sent yet are dropped and counted as cancelled. Returns its state
    ("cancelled", or how it had already ended: "done", "failed")."""

    return runtime().bulk_jobs.cancel(job_id)


def wait_for_bulk(job_id: str, timeout: float = 60.0, interval: float = 0.1) -> dict[str, Any]:
    """Block until every chunk of the job is over (done, cancelled or failed); returns its progress.

    Raises WorkerUnavailable as soon as no live worker serves the bulk queue, TimeoutError after `timeout`.
    """

    jobs = runtime().bulk_jobs
    deadline = time.monotonic() + timeout
    looked = 0.0
    while True:
        progress = jobs.progress(job_id)
        if progress.finished:
            return progress.to_dict()
        if time.monotonic() - looked >= POLL_S:
            require_worker(BULK, then="; the job stays queued and goes on once a bulk worker is back")
            looked = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"bulk job {job_id} not finished after {timeout:g}s: {progress.to_dict()}")
        time.sleep(interval)
