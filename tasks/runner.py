"""The one place a Celery task turns a delivery attempt into retry, dead letter or result."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from worker.delivery import DeliveryFailure, dead_letter, deliver
from worker.jobs import EmailJob
from worker.logs import log_attempt
from worker.retry import Decision
from worker.runtime import runtime

# A claim outlives any single attempt (bounded by the SMTP timeouts) but expires well before the broker
# redelivers a killed worker's message (visibility timeout), so the redelivered copy can claim it.
CLAIM_WAIT_S = 15


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_job(task: Task, job: EmailJob) -> dict[str, Any]:
    """Deliver `job` once; retry transient failures; dead-letter the rest. Returns the task result."""
    services = runtime().services
    try:
        earlier = services.ledger.delivered(job.id)
        if earlier is not None:
            # Redelivered after a crash, or enqueued twice with one idempotency key: never send twice.
            return {**earlier, "status": "duplicate-skipped"}
        if job.expired():
            failure = DeliveryFailure("expired", "the job expired before it could be delivered")
            letter = dead_letter(services, job, failure, services.ledger.attempts(job.id), task.name)
            return _dead_result(job, letter.reason, letter.error, letter.attempts)
        if not services.ledger.admit(job.realm, job.template, job.to, job.id, services.settings.recipient_cooldown):
            # E-mail bombing guard: one mail per recipient and template per cooldown; the rest is dropped
            # on purpose, counted and logged, not dead-lettered (nobody should re-send them).
            services.stats.count(job.realm, "dropped_cooldown")
            log_attempt(**_fields(job, 0, "dropped:cooldown", DeliveryFailure("cooldown", "recipient cooldown"), 0))
            return {"status": "dropped", "reason": "cooldown", "job_id": job.id,
                    "error": f"{job.template} was sent to this recipient less than "
                             f"{services.settings.recipient_cooldown}s ago"}  # fmt: skip
        owner = _owner()
        claim_ttl = max(60, services.settings.visibility_timeout // 3)
        if not services.ledger.claim(job.id, owner, claim_ttl):
            # Another worker holds this job right now (a redelivery raced the first holder).
            raise task.retry(countdown=CLAIM_WAIT_S, max_retries=None)
        try:
            return _attempt(task, job, services)
        finally:
            services.ledger.release(job.id, owner)
    except redis.RedisError as error:
        # The store is unreachable (Redis restarting): give the message back instead of losing it.
        raise Reject(f"store unavailable: {error}", requeue=True) from None


def _attempt(task: Task, job: EmailJob, services: Any) -> dict[str, Any]:
    attempt = services.ledger.next_attempt(job.id)
    started = time.monotonic()
    try:
        result = deliver(job, services, attempt=attempt)
    except DeliveryFailure as failure:
        elapsed = (time.monotonic() - started) * 1000
        if failure.transient:
            delay = services.policy.delay(attempt)
            decision = services.policy.decide(attempt, now=time.time(), expires_at=job.expires_at, delay=delay)
            if decision is Decision.RETRY:
                log_attempt(**_fields(job, attempt, "retry", failure, elapsed))
                raise task.retry(countdown=delay, max_retries=None) from None
            failure = DeliveryFailure(
                decision.value, f"gave up after {attempt} attempt(s): {failure.error}", failure.smtp_code
            )
        log_attempt(**_fields(job, attempt, f"dead:{failure.reason}", failure, elapsed))
        letter = dead_letter(services, job, failure, attempt, task.name)
        return _dead_result(job, letter.reason, letter.error, attempt, failure.smtp_code)
    log_attempt(
        job_id=job.id, realm=job.realm, template=job.template, attempt=attempt, outcome="sent",
        smtp_code=result["smtp_code"], ms=result["duration_ms"],
    )  # fmt: skip
    return result


def _fields(job: EmailJob, attempt: int, outcome: str, failure: DeliveryFailure, ms: float) -> dict[str, Any]:
    return {
        "job_id": job.id, "realm": job.realm, "template": job.template, "attempt": attempt,
        "outcome": outcome, "smtp_code": failure.smtp_code, "ms": ms, "error": failure.error,
    }  # fmt: skip


def _dead_result(
    job: EmailJob, reason: str, error: str, attempts: int, smtp_code: int | None = None
) -> dict[str, Any]:
    return {
        "status": "dead-lettered",
        "job_id": job.id,
        "reason": reason,
        "error": error,
        "smtp_code": smtp_code,
        "attempts": attempts,
    }
