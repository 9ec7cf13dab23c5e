"""The one place a Celery task turns a delivery attempt into retry, dead letter or result."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from config.errors import NotFound
from config.smtp import SmtpSettings
from worker.breaker import PROBING, CircuitBreaker, Verdict, counts_against
from worker.delivery import DeliveryFailure, dead_letter, deliver
from worker.jobs import EmailJob
from worker.logs import log_attempt
from worker.retry import Decision
from worker.runtime import runtime
from worker.smtp import SmtpFailure

log = logging.getLogger(__name__)

# A claim outlives any single attempt (bounded by the SMTP timeouts) but expires well before the broker
# redelivers a killed worker's message (visibility timeout), so the redelivered copy can claim it.
CLAIM_WAIT_S = 15
# Our attempt count (ledger + RetryPolicy) decides when a job dies. Celery's own retry limit must never cut
# in first: `retry(max_retries=None)` means "the task's default", which is 3, and the 4th retry would raise
# MaxRetriesExceededError and end the job as a failed task, neither delivered nor dead-lettered.
CELERY_RETRY_LIMIT = 1_000_000


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_job(task: Task, job: EmailJob) -> dict[str, Any]:
    """Deliver `job` once; retry transient failures; dead-letter the rest. Returns the task result."""
    result = _run_job(task, job)  # a retry raises: the job stays pending, with news due later
    # Ended: sent, dead-lettered, dropped or skipped. If Redis blinks here the sweeper finds it ended later.
    with contextlib.suppress(redis.RedisError):
        runtime().pending.done(job.id)
    return result


def _run_job(task: Task, job: EmailJob) -> dict[str, Any]:
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
        if not services.ledger.admit(
            job.realm, job.template, job.to, job.id, services.settings.recipient_cooldown
        ):
            # E-mail bombing guard: one mail per recipient and template per cooldown; the rest is dropped
            # on purpose, counted and logged, not dead-lettered (nobody should re-send them).
            services.stats.count(job.realm, "dropped_cooldown")
            log_attempt(
                **_fields(job, 0, "dropped:cooldown", DeliveryFailure("cooldown", "recipient cooldown"), 0)
            )
            return {"status": "dropped", "reason": "cooldown", "job_id": job.id,
                    "error": f"{job.template} was sent to this recipient less than "
                             f"{services.settings.recipient_cooldown}s ago"}  # fmt: skip
        owner = _owner()
        claim_ttl = max(60, services.settings.visibility_timeout // 3)
        if not services.ledger.claim(job.id, owner, claim_ttl):
            # Another worker holds this job right now (a redelivery raced the first holder).
            runtime().pending.touch(job.id, busy_for=CLAIM_WAIT_S)
            raise task.retry(countdown=CLAIM_WAIT_S, max_retries=CELERY_RETRY_LIMIT)
        runtime().pending.touch(job.id, busy_for=claim_ttl)
        try:
            return _attempt(task, job, services)
        finally:
            services.ledger.release(job.id, owner)
    except redis.RedisError as error:
        # The store is unreachable (Redis restarting): give the message back instead of losing it.
        raise Reject(f"store unavailable: {error}", requeue=True) from None


@dataclass(frozen=True)
class _Gate:
    """The realm's circuit breaker as one job sees it (worker/breaker.py)."""

    breaker: CircuitBreaker
    endpoint: str
    verdict: Verdict
    realm_settings: tuple[int, SmtpSettings]  # looked up once per attempt, handed on to deliver()


def _gate(job: EmailJob, services: Any) -> _Gate | None:
    """None when the realm has no settings (deliver() dead-letters that) or the breaker is off."""
    try:
        version, settings = services.cache.get(job.realm)
    except NotFound:
        return None
    breaker = runtime().breaker
    endpoint = f"{settings.host}:{settings.port}"
    # The probe slot outlives one connection attempt; a killed prober's slot frees itself.
    verdict = breaker.check(job.realm, endpoint, probe_ttl=settings.connect_timeout + 5)
    return _Gate(breaker, endpoint, verdict, (version, settings))


def _attempt(task: Task, job: EmailJob, services: Any) -> dict[str, Any]:
    gate = _gate(job, services)
    if gate is not None and not gate.verdict.allowed:
        return _circuit_open(task, job, services, gate)
    attempt = services.ledger.next_attempt(job.id)
    started = time.monotonic()
    try:
        result = deliver(job, services, attempt=attempt, realm_settings=gate.realm_settings if gate else None)
    except DeliveryFailure as failure:
        if gate is not None:
            _report(gate, job, failure)
        elapsed = (time.monotonic() - started) * 1000
        delay = services.policy.delay(attempt) if failure.transient else 0.0
        return _retry_or_dead_letter(task, job, services, attempt, failure, delay, elapsed, "retry")
    if gate is not None and gate.verdict.tracked:
        gate.breaker.success(job.realm)
    log_attempt(
        job_id=job.id, realm=job.realm, template=job.template, attempt=attempt, outcome="sent",
        smtp_code=result["smtp_code"], ms=result["duration_ms"],
    )  # fmt: skip
    return result


def _report(gate: _Gate, job: EmailJob, failure: DeliveryFailure) -> None:
    """Tell the breaker what the attempt proved: nobody answers there, or the server is alive."""
    # deliver() raises DeliveryFailure while handling the SmtpFailure: that one is its context.
    cause = failure.__cause__ or failure.__context__
    if not isinstance(cause, SmtpFailure):
        return  # rendering, settings, expiry: says nothing about the server
    if counts_against(cause):
        if gate.breaker.failure(job.realm, gate.endpoint, failure.error):
            log.warning("circuit opened for realm %s: %s", job.realm, failure.error)
    elif gate.verdict.tracked:
        gate.breaker.success(job.realm)


def _circuit_open(task: Task, job: EmailJob, services: Any, gate: _Gate) -> dict[str, Any]:
    """The realm's server is known dark: do not connect (that would hold this process for a timeout).

    Counted as a failed attempt, so the job still dies on schedule (max attempts, expiry), and re-scheduled
    no earlier than the end of the cool-off, so it does not burn its attempts in a tight loop.
    """
    verdict = gate.verdict
    attempt = services.ledger.next_attempt(job.id)
    why = (
        "the probe is in flight" if verdict.state == PROBING else f"{verdict.failures} connection failure(s)"
    )
    failure = DeliveryFailure(
        "retry",
        f"circuit open for {gate.endpoint} ({why}; last: {verdict.error or 'n/a'}); "
        f"not connecting for {verdict.wait:.1f}s",
    )
    services.stats.count(job.realm, "circuit_open")
    # Spread the jobs that waited together over a fifth of the wait: they must not all knock at once.
    delay = max(
        services.policy.delay(attempt), verdict.wait * random.uniform(1.0, 1.2) + random.uniform(0, 1)
    )
    return _retry_or_dead_letter(task, job, services, attempt, failure, delay, 0.0, "retry:circuit-open")


def _retry_or_dead_letter(
    task: Task, job: EmailJob, services: Any, attempt: int, failure: DeliveryFailure, delay: float,
    elapsed_ms: float, retry_outcome: str,
) -> dict[str, Any]:  # fmt: skip
    """A transient failure is retried after `delay` unless attempts or the job's expiry say stop."""
    if failure.transient:
        decision = services.policy.decide(attempt, now=time.time(), expires_at=job.expires_at, delay=delay)
        if decision is Decision.RETRY:
            log_attempt(**_fields(job, attempt, retry_outcome, failure, elapsed_ms))
            services.ledger.note_error(job.id, failure.error)
            runtime().pending.touch(job.id, busy_for=delay)
            raise task.retry(countdown=delay, max_retries=CELERY_RETRY_LIMIT) from None
        failure = DeliveryFailure(
            decision.value, f"gave up after {attempt} attempt(s): {failure.error}", failure.smtp_code
        )
    log_attempt(**_fields(job, attempt, f"dead:{failure.reason}", failure, elapsed_ms))
    letter = dead_letter(services, job, failure, attempt, task.name)
    return _dead_result(job, letter.reason, letter.error, attempt, failure.smtp_code)


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
