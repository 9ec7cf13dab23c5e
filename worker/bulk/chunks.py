"""One chunk of a bulk job delivered over one SMTP session (the worker side of bulk).

`run_chunk` is called by the thin Celery task `mail.bulk.chunk` (tasks/bulk.py), which only turns the
returned `ChunkResult` into "done" or a re-scheduled task (the producer side is worker/bulk/recipients.py).
What a chunk does, in groups of a few messages:

    read the chunk's recipients, skip those whose done bit is set (sent before a crash, or by a first run)
    per group: reserve the group in the realm's shared rate limiter (sleep the wait, or come back later)
               -> render once per (locale, per-recipient context) -> build -> send on the pooled session
               (PIPELINING when offered; reconnect at once when the server ends a session that was sending)
               -> dead-letter the refused (5xx) -> set done bits and counters in one Lua call
               -> stop when the job was cancelled
    then: recipients deferred by a transient failure (4xx, connection lost) -> retry the chunk with backoff
          (the done bits make the retry send only them); after max attempts they are dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config.errors import NotFound, StoreUnavailable
from config.names import BULK, BULK_CHUNK_TASK
from config.smtp import SmtpSettings
from worker.bulk.messages import (
    EarlyCommit,
    MessageFactory,
    Recipient,
    chunk_recipients,
    group_size,
    without_suppressed,
)
from worker.bulk.progress import CANCELLED, FAILED, BulkJob, BulkJobs
from worker.content.message import OutgoingMessage
from worker.delivery.deliver import DeliveryFailure, Services, failure_from_smtp, oauth_token
from worker.delivery.oauth import uses_xoauth2
from worker.delivery.ratelimit import RateLimiter
from worker.jobs.deadletters import DeadLetter
from worker.jobs.model import EmailJob
from worker.liveness.heartbeat import BUSY, Claims
from worker.outcomes.outcome import DEAD_LETTERED, SENT, Outcome
from worker.outcomes.tallies import Batch
from worker.policy import AUTH_FAILURE_CODES, ChunkAction, Decision, chunk_action
from worker.smtp import SendResult, SmtpFailure, SmtpSession

log = logging.getLogger(__name__)

TASK_NAME = BULK_CHUNK_TASK


# ---- worker side: one chunk --------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """What the task does next: `done`, or run again after `countdown` (`retry` counts as an attempt)."""

    status: str  # done | retry | later | busy | gone
    countdown: float = 0.0
    sent: int = 0
    failed: int = 0
    cancelled: int = 0
    suppressed: int = 0  # on the realm's suppression list: skipped, never sent
    deferred: int = 0
    ambiguous: int = 0  # messages whose data went out without a reply (they may have arrived)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v or k == "status"}


@dataclass
class _GroupOutcome:
    sent: list[Recipient] = field(default_factory=list)
    failed: list[tuple[Recipient, DeliveryFailure]] = field(default_factory=list)  # for good: dead-lettered
    deferred: list[Recipient] = field(default_factory=list)  # a 4xx for the message: the chunk's retry
    unsent: list[Recipient] = field(default_factory=list)  # not sent because no session could be had
    ambiguous: list[tuple[Recipient, SmtpFailure]] = field(default_factory=list)  # sent, no reply
    # Why there is no session: connect, auth, a fresh session ending (SmtpFailure), or no XOAUTH2 token.
    down: SmtpFailure | DeliveryFailure | None = None


@dataclass
class ChunkRun:
    """One run of one chunk. `run_chunk` below is the entry point."""

    services: Services
    jobs: BulkJobs
    limiter: RateLimiter
    job: BulkJob
    chunk: int
    version: int
    settings: SmtpSettings | None  # None: the realm has no saved settings (the chunk only dead-letters)
    budget: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    result: ChunkResult = field(default_factory=lambda: ChunkResult("done"))
    tally: Batch = field(default_factory=Batch)  # the metrics' counters, written once at the end of the run

    def deliver(self, pending: list[Recipient]) -> ChunkResult:
        assert self.settings is not None
        deadline = self.clock() + self.budget
        factory = MessageFactory(self.services.renderer, self.settings, self.job)
        per_second, per_hour = self.settings.rate_limit_per_second, self.settings.rate_limit_per_hour
        size = group_size(per_second)
        deferred: list[Recipient] = []
        while pending:
            group, pending = pending[:size], pending[size:]
            reservation = self.limiter.reserve(self.job.realm, len(group), per_second, per_hour)
            if not reservation.reserved or reservation.wait > deadline - self.clock():
                # An hourly quota spent, or a wait longer than this run may take: the broker holds the
                # task meanwhile (a countdown, looked at again after at most the longest retry delay),
                # not a sleeping worker.
                return self._later(min(reservation.wait, self.services.settings.retry_max_delay))
            if reservation.wait > 0:
                self.sleep(reservation.wait)
            outcome = self._send_group(factory, group)
            deferred += outcome.deferred + self._ambiguous(outcome)
            state = self._commit(outcome.sent, outcome.failed)
            if outcome.down is not None:
                return self._session_down(outcome.down, [*outcome.unsent, *pending, *deferred])
            if state == CANCELLED:
                return self._cancel([*pending, *deferred])
            if state == FAILED:
                return self._settings_failed([*pending, *deferred])
            if pending and self.clock() > deadline:
                return self._later(0.0)
        if deferred:
            return self._deferred(deferred)
        return self._finish()

    # -- sending -----------------------------------------------------------------------------------------

    def _send_group(self, factory: MessageFactory, group: list[Recipient]) -> _GroupOutcome:
        result = _GroupOutcome()
        outgoing: list[tuple[Recipient, OutgoingMessage]] = []
        for recipient in group:
            try:
                outgoing.append((recipient, factory.build(recipient)))
            except DeliveryFailure as failure:
                result.failed.append((recipient, failure))
        fresh_tries = 2  # a session that accepts nothing gets one successor, then the chunk is retried later
        while outgoing:
            try:
                session = self._session()
            except (SmtpFailure, DeliveryFailure) as failure:
                self.tally.error(failure)
                result.unsent, result.down = [r for r, _ in outgoing], failure
                return result
            before = session.messages_sent
            early = EarlyCommit(self.jobs, self.job.id, [recipient for recipient, _ in outgoing], self.clock)
            outcomes = session.send_many([message for _, message in outgoing], on_accepted=early)
            unsent: list[tuple[Recipient, OutgoingMessage]] = []
            ended: SmtpFailure | None = None
            for (recipient, message), outcome in zip(outgoing, outcomes, strict=True):
                if isinstance(outcome, SendResult):
                    result.sent.append(recipient)
                    continue
                self.tally.error(outcome)
                action = chunk_action(outcome)
                if outcome.ambiguous:
                    # The data went out, the reply never came: the server may have it. Never again on
                    # a fresh session at once (that is how one recipient got 16 copies); the chunk's
                    # retry, with backoff and the same Message-ID, takes it up.
                    result.ambiguous.append((recipient, outcome))
                elif action is ChunkAction.FAILED:
                    result.failed.append((recipient, failure_from_smtp(outcome)))
                elif action in (ChunkAction.STOP, ChunkAction.RECONNECT):
                    unsent.append((recipient, message))
                    ended = outcome if ended is None or action is ChunkAction.STOP else ended
                else:
                    result.deferred.append(recipient)
            if session.closed:
                self.services.pool.discard(self.job.realm)
            if ended is not None:
                # The server ended the session (a limit of messages per session, an idle timeout): a
                # session that was accepting is replaced at once; one that accepted nothing, once.
                fresh_tries = 2 if session.messages_sent > before else fresh_tries - 1
                if fresh_tries == 0 or chunk_action(ended) is ChunkAction.STOP:
                    result.unsent, result.down = [r for r, _ in unsent], ended
                    return result
            outgoing = unsent
        return result

    def _ambiguous(self, outcome: _GroupOutcome) -> list[Recipient]:
        """Count each ambiguous recipient's copies; those at the policy's bound are dead-lettered (added to
        the group's failures), the others are returned to be retried with the chunk."""
        if not outcome.ambiguous:
            return []
        counts = self.jobs.note_ambiguous(self.job.id, [r.index for r, _ in outcome.ambiguous])
        self.result.ambiguous += len(outcome.ambiguous)
        retry: list[Recipient] = []
        for (recipient, error), count in zip(outcome.ambiguous, counts, strict=True):
            if count >= self.services.policy.max_ambiguous:
                failure = DeliveryFailure("ambiguous", f"gave up: {failure_from_smtp(error).error}")
                outcome.failed.append((recipient, failure.maybe_delivered(count)))
            else:
                retry.append(recipient)
        return retry

    def _session(self) -> SmtpSession:
        """The realm's pooled session, or a new one. With XOAUTH2 it logs in with the realm's token (cached,
        or fetched now); a cached token the server rejects is replaced once by a fresh one, as in
        transactional delivery. A token failure is a DeliveryFailure ('retry' or 'settings')."""
        assert self.settings is not None
        realm, ca_file = self.job.realm, self.services.settings.smtp_ca_file
        if not uses_xoauth2(self.settings):
            return self.services.pool.session(realm, self.version, self.settings, ca_file=ca_file)
        token = oauth_token(self.services, realm, self.settings)
        try:
            return self.services.pool.session(realm, self.version, self.settings, ca_file=ca_file,
                                              oauth_token=token.value)  # fmt: skip
        except SmtpFailure as error:
            if token.fresh or error.stage != "auth" or error.code not in AUTH_FAILURE_CODES:
                raise
        self.services.oauth.invalidate(realm, token.value)
        token = oauth_token(self.services, realm, self.settings)
        return self.services.pool.session(realm, self.version, self.settings, ca_file=ca_file,
                                          oauth_token=token.value)  # fmt: skip

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _commit(self, sent: list[Recipient], failed: list[tuple[Recipient, DeliveryFailure]]) -> str:
        # Dead letters first: a crash before the commit re-sends to a refused recipient (who is refused
        # again), never loses the record of one.
        for recipient, failure in failed:
            self._dead_letter(recipient, failure, attempts=1)
        state = self.jobs.commit(
            self.job.id, sent=[r.index for r in sent], failed=[r.index for r, _ in failed]
        )
        self.result.sent += len(sent)
        self.result.failed += len(failed)
        if sent:  # enqueue (the bulk job's creation) to acceptance
            self.tally.delays.append((time.time() - self.job.created_at, len(sent)))
        return state

    def _dead_letter(self, recipient: Recipient, failure: DeliveryFailure, attempts: int) -> None:
        """One dead letter per recipient, carrying a mail.send job: `mailworker dead requeue` works."""
        job = EmailJob(
            id=f"{self.job.id}-{recipient.index}",
            realm=self.job.realm,
            template=self.job.template,
            to=recipient.to,
            to_name=recipient.name,
            locale=recipient.locale or self.job.locale,
            context={**self.job.context, **(recipient.context or {})},
            created_at=self.job.created_at,
        )
        self.services.dead.add(
            DeadLetter(
                job_id=job.id, realm=job.realm, template=job.template, to=job.to, reason=failure.reason,
                error=failure.error, attempts=attempts, task=TASK_NAME, smtp_code=failure.smtp_code,
                job=job.model_dump(mode="json"), first_attempt_at=self.job.created_at,
            )
        )  # fmt: skip

    def _give_up(self, recipients: list[Recipient], failure: DeliveryFailure, attempts: int) -> None:
        for recipient in recipients:
            self._dead_letter(recipient, failure, attempts)
        self.jobs.commit(self.job.id, failed=[r.index for r in recipients])
        self.result.failed += len(recipients)

    def _finish(self) -> ChunkResult:
        self.jobs.finish_chunk(self.job.id, self.chunk)
        self.result.status = "done"
        return self.result

    def _later(self, countdown: float) -> ChunkResult:
        self.result.status, self.result.countdown = "later", max(countdown, 0.0)
        return self.result

    def _cancel(self, remaining: list[Recipient]) -> ChunkResult:
        self.jobs.commit(self.job.id, cancelled=[r.index for r in remaining])
        self.result.cancelled += len(remaining)
        return self._finish()

    def _settings_failed(
        self, remaining: list[Recipient], failure: DeliveryFailure | None = None
    ) -> ChunkResult:
        failure = failure or DeliveryFailure(
            "settings", self.job.error or "the realm's SMTP settings are wrong"
        )
        self._give_up(remaining, failure, attempts=0)
        self.result.error = failure.error
        return self._finish()

    def _session_down(self, error: SmtpFailure | DeliveryFailure, remaining: list[Recipient]) -> ChunkResult:
        failure = error if isinstance(error, DeliveryFailure) else failure_from_smtp(error)
        if failure.reason == "settings":
            # Wrong password, TLS or AUTH setup: every chunk would fail the same way (and hammer the
            # provider's login): the job stops, the rest of it is dead-lettered without connecting.
            self.jobs.fail(self.job.id, failure.error)
            return self._settings_failed(remaining, failure)
        return self._deferred(remaining, failure.error)

    def _deferred(self, remaining: list[Recipient], error: str | None = None) -> ChunkResult:
        attempt = self.jobs.next_attempt(self.job.id, self.chunk)
        policy = self.services.policy
        decision, delay = policy.decide(attempt, now=time.time(), created_at=self.job.created_at,
                                        expires_at=None, delay=policy.delay(attempt))  # fmt: skip
        if decision is not Decision.RETRY:
            reason = f"gave up after {attempt} attempt(s)" + (
                f": {error}" if error else ": temporary refusals"
            )
            self._give_up(remaining, DeliveryFailure(decision.value, reason), attempts=attempt)
            self.result.error = reason
            return self._finish()
        self.result.status, self.result.countdown = "retry", delay
        self.tally.retries += len(remaining)
        self.result.deferred, self.result.error = len(remaining), error
        return self.result


def run_chunk(services: Services, jobs: BulkJobs, limiter: RateLimiter, job_id: str, chunk: int, *,
              claims: Claims, budget: float | None = None) -> ChunkResult:  # fmt: skip
    """Deliver what is left of one chunk. Never sends a recipient whose done bit is set."""
    try:
        job = jobs.job(job_id)
    except NotFound:
        return ChunkResult("gone", error=f"bulk job {job_id} no longer exists")
    # One worker per chunk at a time: a redelivered copy must not send alongside the first holder, and a
    # holder whose process died (its heartbeat lapsed) is taken over at once.
    claim_key = jobs.keys.bulk_chunk_claim(job_id, chunk)
    if claims.claim(claim_key) == BUSY:
        return ChunkResult("busy", countdown=claims.wait_hint(claim_key))
    try:
        stored = jobs.recipients(job_id, chunk)
        if stored is None:  # the chunk finished before (a duplicate task): count it, nothing to send
            jobs.finish_chunk(job_id, chunk)
            return ChunkResult("done")
        recipients = chunk_recipients(job.first_index(chunk), stored)
        done = jobs.done_flags(job_id, job.first_index(chunk), len(recipients))
        pending = [r for r, flag in zip(recipients, done, strict=True) if not flag]
        pending, suppressed = without_suppressed(services.suppressions, job.realm, pending)
        if suppressed:
            jobs.commit(job_id, suppressed=[r.index for r in suppressed])
        state = jobs.start(job_id)
        missing: DeliveryFailure | None = None
        unavailable: str | None = None
        version, settings = 0, None
        try:
            version, settings = services.cache.get(job.realm)
        except NotFound as error:
            missing = DeliveryFailure("settings", str(error))
            jobs.fail(job_id, missing.error)
            state = FAILED
        except StoreUnavailable as error:  # wiped, not restored yet: wait (with backoff) for an admin
            unavailable = str(error)
        # A run gives the worker back after a while (the rest of the chunk is taken up again at once).
        run = ChunkRun(services, jobs, limiter, job, chunk, version, settings,
                       budget=budget if budget is not None else services.settings.task_time_limit / 4)  # fmt: skip
        if state == CANCELLED:
            result = run._cancel(pending)
        elif state == FAILED:
            result = run._settings_failed(pending, missing)
        elif unavailable is not None:
            result = run._deferred(pending, unavailable)
        else:
            result = run.deliver(pending)
        result.suppressed = len(suppressed)
        if result.sent:
            services.outcomes.record(
                Outcome(SENT, job.realm, job_id, job.template, count=result.sent, bulk=True)
            )
        if result.failed:
            services.outcomes.record(Outcome(DEAD_LETTERED, job.realm, job_id, job.template, count=result.failed,
                                             bulk=True))  # fmt: skip
        if result.ambiguous:
            services.stats.count(job.realm, "ambiguous", result.ambiguous)
        run.tally.recipients.update(sent=result.sent, dead_lettered=result.failed, cancelled=result.cancelled)
        services.tallies.write(job.realm, BULK, run.tally)
        return result
    finally:
        claims.release(claim_key)


def abandon_chunk(
    services: Services, jobs: BulkJobs, job_id: str, chunk: int, failure: DeliveryFailure
) -> int:
    """Dead-letter what is left of a chunk that failed with an unexpected error, and close the chunk.

    A bug (or an input nothing foresaw) must end as dead letters naming it, not as a chunk that stays
    pending until the job expires. Returns how many recipients were dead-lettered.
    """
    try:
        job = jobs.job(job_id)
    except NotFound:
        return 0
    stored = jobs.recipients(job_id, chunk) or []
    recipients = chunk_recipients(job.first_index(chunk), stored)
    done = jobs.done_flags(job_id, job.first_index(chunk), len(recipients))
    pending = [r for r, flag in zip(recipients, done, strict=True) if not flag]
    run = ChunkRun(services, jobs, RateLimiter(jobs.redis, jobs.keys), job, chunk, 0, None, budget=0)
    run._give_up(pending, failure, attempts=jobs.next_attempt(job_id, chunk))
    run._finish()
    if pending:
        services.outcomes.record(Outcome(DEAD_LETTERED, job.realm, job_id, job.template, reason=failure.reason,
                                         count=len(pending), bulk=True))  # fmt: skip
    return len(pending)
