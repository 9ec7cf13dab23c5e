"""One job's status, from everything that knows about it: Celery's result backend, the delivery ledger, the
dead-letter store and the pending ledger. For `mailworker status` and `GET /v1/jobs/{id}`.

Read-only, and without `runtime().services`: it needs no MAILWORKER_SECRET_KEY.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from config.redis import unusable_url

# What `status` means for the caller: delivered, ended without delivery (the rest: not ended, or unknown).
# ignored: an event the realm does not notify. A bounce or complaint heard of after "sent" is the job's
# latest truth (worker/bounces/record.py): a complaint means it was delivered, a bounce that it was not.
DELIVERED = ("sent", "duplicate-skipped", "ignored", "complained")
NOT_DELIVERED = ("dead-lettered", "dropped", "rejected", "failure", "bounced")


def job_status(task_id: str) -> dict[str, Any]:
    """What Celery's result backend, the delivery ledger and the dead-letter store know about one job."""
    from celery.result import AsyncResult

    from config.errors import NotFound
    from tasks.outcomes import dead_letter_result
    from worker.app import app
    from worker.jobs.pending import realm_of
    from worker.runtime import runtime

    rt = runtime()
    # Read-only bookkeeping, without `rt.services`: status must not need MAILWORKER_SECRET_KEY.
    ledger = rt.ledger
    try:
        result = AsyncResult(task_id, app=app)
        state = result.state
        if state in ("PENDING", "RETRY") and rt.redis.exists(rt.keys.claim(task_id)):
            state = "STARTED"  # a worker holds the job now (no STARTED result is written: worker/app.py)
        value = dead_letter_result(result.result) or result.result  # FAILURE: DeadLettered carries it
    except Exception as error:  # a backend Celery cannot load or reach: each raises its own kind
        url = rt.settings.result_backend
        raise unusable_url("MAILWORKER_RESULT_BACKEND", "the result backend", url, error) from None
    facts = ledger.fields(task_id)
    info: dict[str, Any] = {"job_id": task_id, "state": state, "attempts": int(facts.get("attempts") or 0)}
    if facts.get("ambiguous"):
        info["ambiguous"] = int(facts["ambiguous"])
    if isinstance(value, dict):
        for name in ("status", "reason", "smtp_code", "message_id", "error", "sent_at", "ambiguous",
                     "maybe_delivered", "queue", "task", "realm", "server"):  # fmt: skip
            if value.get(name) is not None:
                info[name] = value[name]
        info["attempts"] = max(info["attempts"], int(value.get("attempts") or 0))
    elif isinstance(value, BaseException):
        # FAILURE: the exception (a bug); RETRY: Celery's Retry ("Retry in 5s"); the SMTP error of the
        # failed attempt is the ledger's last_error (below).
        info["error" if state == "FAILURE" else "retry"] = f"{type(value).__name__}: {value}"
    last_error = facts.get("last_error")
    if last_error is not None and state == "RETRY":
        info["last_error"] = last_error
    try:
        letter = rt.dead_letters.get(task_id)
    except NotFound:
        letter = None
    if letter is not None:
        info.setdefault("status", "dead-lettered")
        info.update(reason=letter.reason, error=letter.error, task=letter.task, realm=letter.realm)
        info["attempts"] = max(info["attempts"], letter.attempts)
        info["died_at"] = letter.died_at
    delivered = ledger.delivered(task_id)
    if delivered is not None and "status" not in info:
        info.update(status="sent", message_id=delivered.get("message_id"), sent_at=delivered.get("sent_at"))
    # Queued, started or waiting for a retry: no result names the realm yet; the pending ledger's entry does
    # (GET /v1/jobs/{id} shows a realm-limited token its own queued jobs by it).
    entry = rt.pending.entry(task_id) if "realm" not in info or state == "PENDING" else None
    if "realm" not in info and realm_of(entry) is not None:
        info["realm"] = realm_of(entry)
    if state == "PENDING" and "status" not in info:
        # Celery says PENDING for a job it never heard of too: the pending ledger knows the queued ones.
        if facts or entry is not None:
            info["status"] = "queued"
        else:
            info["known"] = False
            wiped = " (or lost when the store was wiped)" if rt.store.wipe() is not None else ""
            info["status"] = f"unknown: no such job, or its records expired{wiped}"
    for name in ("name", "worker", "queue", "date_done"):
        extended = getattr(result, name, None)
        if isinstance(extended, dt.datetime):  # date_done: Celery's UTC datetime, a Unix time here
            extended = (extended if extended.tzinfo else extended.replace(tzinfo=dt.UTC)).timestamp()
        if extended is not None:
            info["task" if name == "name" else name] = extended
    info.setdefault("status", state.lower())
    bounce = rt.redis.get(rt.keys.bounce(task_id))
    if bounce is not None:
        info["bounce"] = json.loads(bounce)
        info["status"] = info["bounce"]["status"]
    return info
