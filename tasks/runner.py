"""The one place a Celery task turns a delivery attempt into retry, dead letter or result (and an event's
user look-up, which comes before its delivery: `look_up_user`)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded

from config.errors import InvalidInput, NotFound, StoreUnavailable
from config.names import EVENT_TASK
from config.smtp import SmtpSettings
from tasks.outcomes import raise_if_dead
from worker.delivery.breaker import PROBING, CircuitBreaker, Verdict
from worker.delivery.deliver import DeliveryFailure, bury, dead_letter, deliver
from worker.delivery.failover import after_the_primary
from worker.delivery.iam_users import LookupFailure
from worker.jobs.deadletters import DeadLetter
from worker.jobs.events import IamEvent, event_job, with_user
from worker.jobs.ledger import DEAD, DROPPED, died_after_data
from worker.jobs.model import EmailJob
from worker.liveness.heartbeat import BUSY, TAKEN_OVER
from worker.logs import log_attempt
from worker.outcomes.outcome import DROPPED as DROPPED_OUTCOME
from worker.outcomes.outcome import Outcome
from worker.policy import RETRY, Decision, counts_against
from worker.runtime import runtime
from worker.smtp import SmtpFailure

log = logging.getLogger(__name__)

# Our attempt count (ledger + RetryPolicy) decides when a job dies. Celery's own retry limit must never cut
# in first: `retry(max_retries=None)` means "the task's default", which is 3, and the 4th retry would raise
# MaxRetriesExceededError and end the job as a failed task, neither delivered nor dead-lettered.
CELERY_RETRY_LIMIT = 1_000_000
# A rate-limit wait this short is slept in place; a longer one gives the worker back (a countdown).
RATE_WAIT_IN_PLACE_S = 2.0


def run_job(task: Task, job: EmailJob) -> dict[str, Any]:
    """Deliver `job` once; retry transient failures; dead-letter the rest. Returns the task result, or
    raises DeadLettered carrying it (tasks/outcomes.py)."""
    try:
        result = _run_job(task, job)  # a retry raises: the job stays pending, with news due later
    except (Retry, Reject):
        raise
    except Exception as error:  # a bug or an input nothing foresaw: a dead letter, never a bare FAILURE
        result = _internal_error(task, job, error)
    result.setdefault("task", task.name)  # `mailworker status` shows it (results are not "extended")
    result.setdefault("realm", job.realm)  # whose job: an API token limited to realms sees only theirs
    # Ended: sent, dead-lettered, dropped or skipped; the pending ledger forgets it once the result is
    # stored (TrackedJob.after_return).
    return raise_if_dead(result)  # a dead letter is a FAILURE in Celery's eyes (tasks/outcomes.py)


def _internal_error(task: Task, job: EmailJob, error: Exception) -> dict[str, Any]:
    if isinstance(error, redis.RedisError):
        # The store is unreachable (Redis restarting): give the message back instead of losing it.
        raise Reject(f"store unavailable: {error}", requeue=True) from None
    what = "the task's time limit was reached" if isinstance(error, SoftTimeLimitExceeded) else str(error)
    failure = DeliveryFailure("internal", f"{type(error).__name__}: {what}"[:1000])
    log.error("job %s failed with an unexpected error: dead-lettered (internal)", job.id, exc_info=error)
    services = runtime().services
    try:
        attempts = services.ledger.attempts(job.id)
        letter = dead_letter(services, job, failure, attempts, task.name)
    except redis.RedisError as store_error:
        raise Reject(f"store unavailable: {store_error}", requeue=True) from None
    return _dead_result(job, letter.reason, letter.error, attempts)


def _run_job(task: Task, job: EmailJob) -> dict[str, Any]:
    services = runtime().services
    facts = services.ledger.fields(job.id)
    ended = _ended_before(job, facts)
    if ended is not None:
        return ended
    if job.expired():
        failure = DeliveryFailure("expired", "the job expired before it could be delivered")
        letter = dead_letter(services, job, failure, services.ledger.attempts(job.id), task.name)
        return _dead_result(job, letter.reason, letter.error, letter.attempts)
    if not services.ledger.admit(
        job.realm, job.template, job.to, job.id, services.settings.recipient_cooldown
    ):
        # E-mail bombing guard: one mail per recipient and template per cooldown; the rest is dropped on
        # purpose, counted and logged, not dead-lettered (nobody should re-send them).
        services.outcomes.record(
            Outcome(DROPPED_OUTCOME, job.realm, job.id, job.template, job.to, reason="cooldown")
        )
        services.ledger.end(job.id, DROPPED)
        log_attempt(
            **_fields(job, 0, "dropped:cooldown", DeliveryFailure("cooldown", "recipient cooldown"), 0)
        )
        return {"status": "dropped", "reason": "cooldown", "job_id": job.id,
                "error": f"{job.template} was sent to this recipient less than "
                         f"{services.settings.recipient_cooldown}s ago"}  # fmt: skip
    claims = runtime().claims
    claim_key = runtime().keys.claim(job.id)
    claimed = claims.claim(claim_key)
    if claimed == BUSY:
        # Another live worker holds this job right now (a redelivery raced the first holder): look again
        # once that holder is done or its heartbeat has lapsed.
        wait = claims.wait_hint(claim_key)
        runtime().pending.touch(job.id, busy_for=wait)
        raise task.retry(countdown=wait, max_retries=CELERY_RETRY_LIMIT)
    try:
        result = _claimed(task, job, services, facts, taken_over=claimed == TAKEN_OVER)
    except BaseException:
        claims.release(claim_key)  # a retry, or an error: the claim goes only if it is still ours
        raise
    # The job ended (sent, dead-lettered) and says so in the ledger, so every copy skips it: one DEL
    # instead of the compare-and-delete script, whoever holds the claim by now.
    claims.drop(claim_key)
    return result


def _claimed(task: Task, job: EmailJob, services: Any, facts: dict[str, str], *, taken_over: bool
             ) -> dict[str, Any]:  # fmt: skip
    """The job's attempt, under its claim."""
    if taken_over:
        log.warning("job %s: its previous holder died; taken over", job.id)
        facts = services.ledger.fields(job.id)
        ended = _ended_before(job, facts)  # the dead holder may have finished it just before dying
        if ended is not None:
            return ended
    if died_after_data(facts):
        dead = _after_a_death_in_the_data(task, job, services)
        if dead is not None:
            return dead
    runtime().pending.touch_for_attempt(job.id, job.created_at, busy_for=services.settings.task_time_limit)
    return _attempt(task, job, services)


def _after_a_death_in_the_data(task: Task, job: EmailJob, services: Any) -> dict[str, Any] | None:
    """The previous holder died after sending the data: count that attempt as ambiguous (the server may
    have the mail); None to go on with a new attempt (same Message-ID), else the dead-letter result."""
    ambiguous = services.ledger.note_ambiguous(job.id)
    services.stats.count(job.realm, "ambiguous")
    log.warning("job %s: its previous attempt died after sending the data (ambiguous %d)", job.id, ambiguous)
    if ambiguous < services.policy.max_ambiguous:
        return None
    attempts = services.ledger.attempts(job.id)
    failure = DeliveryFailure(
        "ambiguous", f"gave up after {attempts} attempt(s): a worker died after sending the data"
    ).maybe_delivered(ambiguous)
    letter = dead_letter(services, job, failure, attempts, task.name)
    return _dead_result(job, letter.reason, letter.error, attempts, None, ambiguous)


def _ended_before(job: EmailJob, facts: dict[str, str]) -> dict[str, Any] | None:
    """The result of a job that ended already (a redelivered copy, or a repeat of an idempotency key)."""
    services = runtime().services
    if "delivered" in facts:
        # Redelivered after a crash, or enqueued twice with one idempotency key: never send twice.
        earlier = json.loads(facts["delivered"])
        return {
            **earlier,
            "status": "duplicate-skipped",
            "job_id": job.id,
            "attempts": int(facts.get("attempts") or 0),
        }
    state = facts.get("state")
    if state == DEAD:
        try:
            letter = services.dead.get(job.id)
        except NotFound:  # purged by an operator meanwhile
            return _dead_result(job, "unknown", "dead-lettered earlier", services.ledger.attempts(job.id))
        return _dead_result(job, letter.reason, letter.error, letter.attempts, letter.smtp_code)
    if state == DROPPED:
        return {"status": "dropped", "reason": "cooldown", "job_id": job.id, "error": "dropped earlier"}
    if state is not None:  # an event that turned out not to notify, or was rejected
        return {"status": state, "job_id": job.id}
    return None


@dataclass(frozen=True)
class _Gate:
    """The realm's circuit breaker as one job sees it (worker/delivery/breaker.py)."""

    breaker: CircuitBreaker
    endpoint: str
    verdict: Verdict
    realm_settings: tuple[int, SmtpSettings]  # looked up once per attempt, handed on to deliver()


def _gate(job: EmailJob, services: Any) -> _Gate | None:
    """None when the realm has no settings (deliver() dead-letters that) or the breaker is off."""
    try:
        version, settings = services.cache.get(job.realm)
    except (NotFound, StoreUnavailable):
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
    if gate is not None:
        _within_the_rate_limit(task, job, gate.realm_settings[1])
    attempt = services.ledger.next_attempt(job.id)
    started = time.monotonic()
    try:
        result = deliver(job, services, attempt=attempt, realm_settings=gate.realm_settings if gate else None)
    except DeliveryFailure as failed:
        if gate is not None:
            _report(gate, job, failed)
        ended = _failover(job, services, gate, attempt, failed) or failed if gate is not None else failed
        if isinstance(ended, dict):  # the secondary took it
            return _sent(job, attempt, ended)
        elapsed = (time.monotonic() - started) * 1000
        delay = services.policy.delay(attempt) if ended.transient else 0.0
        return _retry_or_dead_letter(task, job, services, attempt, ended, delay, elapsed, "retry")
    if gate is not None and gate.verdict.tracked:
        gate.breaker.success(job.realm)
    return _sent(job, attempt, result)


def _sent(job: EmailJob, attempt: int, result: dict[str, Any]) -> dict[str, Any]:
    log_attempt(
        job_id=job.id, realm=job.realm, template=job.template, attempt=attempt, outcome="sent",
        smtp_code=result["smtp_code"], ms=result["duration_ms"],
    )  # fmt: skip
    return result


def _failover(job: EmailJob, services: Any, gate: _Gate, attempt: int, failed: DeliveryFailure | None
              ) -> dict[str, Any] | DeliveryFailure | None:  # fmt: skip
    return after_the_primary(job, services, gate.breaker, gate.endpoint, attempt=attempt, failed=failed)


def _within_the_rate_limit(task: Task, job: EmailJob, settings: SmtpSettings) -> None:
    """The realm's provider limit holds for all its mail: wait for this job's turn (transactional mail goes
    before bulk), or come back later when the wait is long or the hourly quota is spent (not an attempt)."""
    per_second, per_hour = settings.rate_limit_per_second, settings.rate_limit_per_hour
    if not per_second and not per_hour:
        return
    reservation = runtime().limiter.reserve(job.realm, 1, per_second, per_hour, first=True)
    if reservation.reserved and reservation.wait <= RATE_WAIT_IN_PLACE_S:
        if reservation.wait > 0:
            time.sleep(reservation.wait)
        return
    runtime().pending.touch(job.id, busy_for=reservation.wait)
    raise task.retry(countdown=reservation.wait, max_retries=CELERY_RETRY_LIMIT)


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
    taken = _failover(job, services, gate, attempt, None)  # the realm's secondary, if it has one
    if isinstance(taken, DeliveryFailure):
        delay = services.policy.delay(attempt) if taken.transient else 0.0
        return _retry_or_dead_letter(task, job, services, attempt, taken, delay, 0.0, "retry")
    if taken is not None:
        return _sent(job, attempt, taken)
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
    """A transient failure is retried after `delay` unless the policy says stop (expiry, age, ambiguity)."""
    attempt_failure = failure  # the SMTP error behind it is its context (/metrics counts it by kind)
    if failure.ambiguous:
        ambiguous = services.ledger.note_ambiguous(job.id)
        services.stats.count(job.realm, "ambiguous")
    else:
        ambiguous = services.ledger.ambiguous(job.id)
    if failure.transient:
        decision, delay = services.policy.decide(
            attempt, now=time.time(), created_at=job.created_at, expires_at=job.expires_at, delay=delay,
            ambiguous=ambiguous,
        )  # fmt: skip
        if decision is Decision.RETRY:
            log_attempt(**_fields(job, attempt, retry_outcome, failure, elapsed_ms))
            services.ledger.note_error(job.id, failure.error,
                                       also=services.tallies.failed_attempt(job.realm, failure, retry=True))  # fmt: skip
            runtime().pending.touch(job.id, busy_for=delay)
            raise task.retry(countdown=delay, max_retries=CELERY_RETRY_LIMIT) from None
        failure = DeliveryFailure(
            decision.value, f"gave up after {attempt} attempt(s): {failure.error}", failure.smtp_code,
            ambiguous=failure.ambiguous,
        )  # fmt: skip
    if ambiguous:
        failure = failure.maybe_delivered(ambiguous)
    log_attempt(**_fields(job, attempt, f"dead:{failure.reason}", failure, elapsed_ms))
    letter = dead_letter(services, job, failure, attempt, task.name)
    services.tallies.count_failure(job.realm, attempt_failure)
    return _dead_result(job, letter.reason, letter.error, attempt, failure.smtp_code, ambiguous)


def _fields(job: EmailJob, attempt: int, outcome: str, failure: DeliveryFailure, ms: float) -> dict[str, Any]:
    return {
        "job_id": job.id, "realm": job.realm, "template": job.template, "attempt": attempt,
        "outcome": outcome, "smtp_code": failure.smtp_code, "ms": ms, "error": failure.error,
    }  # fmt: skip


def _dead_result(
    job: EmailJob, reason: str, error: str, attempts: int, smtp_code: int | None = None, ambiguous: int = 0
) -> dict[str, Any]:
    result = {
        "status": "dead-lettered",
        "job_id": job.id,
        "reason": reason,
        "error": error,
        "smtp_code": smtp_code,
        "attempts": attempts,
    }
    if ambiguous:
        # The server took the data of `ambiguous` attempts without confirming: the user may have the mail.
        result.update(ambiguous=ambiguous, maybe_delivered=True)
    return result


def look_up_user(task: Task, realm: str, event: dict[str, Any], parsed: IamEvent, settings: SmtpSettings,
                 template: str) -> IamEvent:  # fmt: skip
    """The event completed with its user from the IAM (worker/delivery/iam_users.py). A failed look-up is
    retried like a transient SMTP failure (same backoff, same limits) or ends as a dead letter naming the
    user id, holding the event itself so that `dead requeue` publishes it again: raises Retry or
    DeadLettered, never loses the notice."""
    rt = runtime()
    services, job_id, user_id = rt.services, task.request.id, str(parsed.user_id)
    started_at = services.ledger.started(job_id, time.time())
    started = time.monotonic()
    try:
        completed = with_user(parsed, rt.users.user(realm, settings, user_id))
        # The IAM's address must make a job (a valid address; SMTPUTF8 only where allowed): else it is the
        # recipient that is wrong, a dead letter too, never a silently rejected event.
        event_job(realm, completed, settings.notify_events, allow_utf8=settings.allow_utf8)
        return completed
    except LookupFailure as failure:
        reason, error = failure.reason, str(failure)
    except InvalidInput as invalid:
        reason, error = (
            "recipient",
            f"user {user_id}: the IAM's address for this user cannot be used: {invalid}",
        )
    except redis.RedisError as store_error:  # the token cache is unreachable: give the message back
        raise Reject(f"store unavailable: {store_error}", requeue=True) from None
    except Exception as bug:  # a bug or an answer nothing foresaw: a dead letter, never a bare FAILURE
        log.error(
            "job %s: the user look-up failed unexpectedly: dead-lettered (internal)", job_id, exc_info=bug
        )
        reason, error = "internal", f"user {user_id}: {type(bug).__name__}: {bug}"[:1000]
    # Only a failed look-up counts as an attempt: one that found the user leaves the count to delivery.
    attempt = services.ledger.next_attempt(job_id)
    fields = {"job_id": job_id, "realm": realm, "template": template, "attempt": attempt, "smtp_code": None,
              "ms": (time.monotonic() - started) * 1000, "error": error}  # fmt: skip
    if reason == RETRY:
        decision, delay = services.policy.decide(attempt, now=time.time(), created_at=started_at, expires_at=None,
                                                 delay=services.policy.delay(attempt))  # fmt: skip
        if decision is Decision.RETRY:
            log_attempt(**fields, outcome="retry:lookup")
            services.ledger.note_error(job_id, error)
            runtime().pending.touch(job_id, busy_for=delay)
            raise task.retry(countdown=delay, max_retries=CELERY_RETRY_LIMIT) from None
        reason, error = decision.value, f"gave up after {attempt} attempt(s): {error}"
        fields["error"] = error
    log_attempt(**fields, outcome=f"dead:{reason}")
    letter = DeadLetter(job_id=job_id, realm=realm, template=template, to="", reason=reason, error=error,
                        attempts=attempt, task=EVENT_TASK, job={"realm": realm, "event": event},
                        first_attempt_at=started_at)  # fmt: skip
    bury(services, letter, {"user_id": user_id, "attempts": attempt})
    with contextlib.suppress(redis.RedisError):
        runtime().pending.done(job_id)
    result = {"status": "dead-lettered", "job_id": job_id, "reason": reason, "error": error, "smtp_code": None,
              "attempts": attempt, "user_id": user_id, "task": EVENT_TASK, "realm": realm}  # fmt: skip
    raise_if_dead(result)
    raise AssertionError("raise_if_dead returned for a dead letter")  # pragma: no cover
