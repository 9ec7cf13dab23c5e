"""Delivering one job: settings -> render -> message -> SMTP, and what a failure means.

Plain functions over `Services`; the Celery tasks in tasks/ only decide about retries and results.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput, MailWorkerError, NotFound, StoreUnavailable
from config.keys import PRIMARY, channel
from config.names import TRANSACTIONAL
from config.settings import ServiceSettings
from config.smtp import SmtpSettings
from worker.bounces.suppression import FLAG, SuppressionList, decide
from worker.bounces.verp import VerpMap, VerpTarget
from worker.content.message import OutgoingMessage, build_message
from worker.content.render import RenderError, TemplateRenderer
from worker.delivery.oauth import AccessToken, TokenError, TokenProvider, uses_xoauth2
from worker.delivery.settings_cache import SettingsCache
from worker.jobs.deadletters import DeadLetter, DeadLetterStore
from worker.jobs.ledger import DEAD, DeliveryLedger
from worker.jobs.model import EmailJob
from worker.jobs.stats import Stats
from worker.outcomes.outcome import SENT, Outcome, dead_letter_event
from worker.outcomes.record import Outcomes
from worker.outcomes.tallies import Tallies
from worker.policy import AUTH_FAILURE_CODES, RetryPolicy, reason_of
from worker.smtp import SendResult, SessionPool, SmtpFailure


class ThreadPools:
    """One SessionPool per thread: a session is one conversation and must not be shared by threads.

    Celery's prefork pool runs one task per process (one pool); the thread pool (tests, the demo,
    `--pool threads`) gets one per thread.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[SessionPool] = []
        self._lock = threading.Lock()

    def get(self) -> SessionPool:
        pool: SessionPool | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = SessionPool()
            with self._lock:
                self._all.append(pool)
        return pool

    def close_all(self) -> None:
        with self._lock:
            pools = list(self._all)
        for pool in pools:
            pool.close_all()


@dataclass
class Services:
    """What delivery needs, built once per worker process (worker/runtime.py)."""

    settings: ServiceSettings
    cache: SettingsCache
    renderer: TemplateRenderer
    pools: ThreadPools
    ledger: DeliveryLedger
    dead: DeadLetterStore
    policy: RetryPolicy
    stats: Stats
    outcomes: Outcomes  # what became of each job: counters, and whatever builds on them
    oauth: TokenProvider  # XOAUTH2 access tokens, cached per realm (worker/delivery/oauth.py)
    verp: VerpMap  # VERP envelope senders and their tokens (worker/bounces/verp.py)
    suppressions: SuppressionList  # hard bounces and complaints per realm (worker/bounces/suppression.py)
    tallies: Tallies  # the metrics' counters: retries, SMTP errors, delivery times
    secondary: SettingsCache | None = None  # the realms' secondary SMTP servers (worker/delivery/failover.py)

    @property
    def pool(self) -> SessionPool:
        return self.pools.get()


class DeliveryFailure(MailWorkerError):
    """A failed attempt. `reason` is 'retry' for transient failures, else the dead-letter reason.

    `ambiguous`: the message's data went out and the server's reply never came, so it may have arrived.
    """

    def __init__(
        self, reason: str, error: str, smtp_code: int | None = None, *, ambiguous: bool = False
    ) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.smtp_code = smtp_code
        self.ambiguous = ambiguous

    @property
    def transient(self) -> bool:
        return self.reason == "retry"

    def maybe_delivered(self, ambiguous: int) -> DeliveryFailure:
        """The same failure, saying that earlier attempts may have delivered the mail."""
        note = (
            f" (the mail may have been delivered: {ambiguous} attempt(s) sent the whole message and "
            "got no reply from the server)"
        )
        return DeliveryFailure(self.reason, self.error + note, self.smtp_code, ambiguous=self.ambiguous)


def failure_from_smtp(error: SmtpFailure) -> DeliveryFailure:
    """The attempt's failure, with the policy's reason (worker/policy.py)."""
    text = f"{error.stage}: {error.code} {error.text}" if error.code else f"{error.stage}: {error.text}"
    return DeliveryFailure(reason_of(error), text, error.code, ambiguous=error.ambiguous)


def prepare_message(job: EmailJob, settings: SmtpSettings, renderer: TemplateRenderer) -> OutgoingMessage:
    """Render and build; failures here are permanent (retrying renders the same error)."""
    try:
        rendered = renderer.render(job.realm, job.template, job.locale, job.context)
    except RenderError as error:
        raise DeliveryFailure("template", str(error)) from None
    try:
        # One Message-ID per job, on every attempt: a copy an ambiguous attempt may have left at the
        # server is recognisable as the same message by servers and mail clients.
        return build_message(settings, rendered, job.to, to_name=job.to_name, message_key=job.id)
    except (InvalidInput, ValueError) as error:
        raise DeliveryFailure("invalid", str(error)) from None


def oauth_token(services: Services, realm: str, settings: SmtpSettings) -> AccessToken:
    """The realm's XOAUTH2 access token; a token failure is a retry or a settings problem."""
    try:
        return services.oauth.token(realm, settings)
    except TokenError as error:
        raise DeliveryFailure("retry" if error.transient else "settings", str(error)) from None


def send_message(
    realm: str,
    version: int,
    settings: SmtpSettings,
    message: OutgoingMessage,
    services: Services,
    on_data: Callable[[], None] | None = None,
) -> SendResult:
    """Send on the realm's pooled session. With XOAUTH2, a cached token the server rejects (it expired
    early, or was revoked) is replaced once by a fresh one; a rejected fresh token is the settings' fault."""
    ca_file = services.settings.smtp_ca_file
    if not uses_xoauth2(settings):
        return services.pool.send(realm, version, settings, message, ca_file=ca_file, on_data=on_data)
    token = oauth_token(services, realm, settings)
    try:
        return services.pool.send(realm, version, settings, message, ca_file=ca_file, oauth_token=token.value,
                                  on_data=on_data)  # fmt: skip
    except SmtpFailure as error:
        if token.fresh or error.stage != "auth" or error.code not in AUTH_FAILURE_CODES:
            raise
    services.oauth.invalidate(realm, token.value)
    token = oauth_token(services, realm, settings)
    return services.pool.send(realm, version, settings, message, ca_file=ca_file, oauth_token=token.value,
                              on_data=on_data)  # fmt: skip


def deliver(
    job: EmailJob, services: Services, *, attempt: int, realm_settings: tuple[int, SmtpSettings] | None = None,
    server: str = PRIMARY,
) -> dict[str, Any]:  # fmt: skip
    """One attempt at delivering `job`. Returns the result, or raises DeliveryFailure.

    `realm_settings` (version, settings) when the caller looked them up for this attempt already; `server`
    the realm's server they are of (the secondary's come from worker/delivery/failover.py).
    """
    started = time.monotonic()
    try:
        version, settings = realm_settings or services.cache.get(job.realm)
    except NotFound as error:
        raise DeliveryFailure("settings", str(error)) from None
    except StoreUnavailable as error:  # wiped or not configured yet: wait for an admin to restore it
        raise DeliveryFailure("retry", str(error)) from None
    message = prepare_message(job, settings, services.renderer)
    if settings.verp:
        target = VerpTarget(job.realm, job.id, job.to, job.template)
        if (address := services.verp.address(message.envelope_from, target)) is not None:
            message = dataclasses.replace(message, envelope_from=address)
    # Identity mail goes out even to a suppressed address (the user may have fixed the mailbox), flagged
    # so that the IAM hears of it and decides (docs/bounces.md).
    suppression = services.suppressions.get(job.realm, job.to)
    flagged = suppression if decide(suppression is not None, identity=True) == FLAG else None

    def data_going_out() -> None:
        # Recorded before the body leaves: if this process dies now, whoever takes the job over knows
        # the server may already have the mail (worker/jobs/ledger.py, tasks/runner.py).
        services.ledger.note_data_out(job.id, attempt)

    try:
        # Sessions, tokens and the breaker are per realm and server: the primary's and secondary's never mix.
        result = send_message(channel(job.realm, server), version, settings, message, services,
                              on_data=data_going_out)  # fmt: skip
    except SmtpFailure as error:
        raise failure_from_smtp(error) from None
    record = {
        "status": "sent",
        "job_id": job.id,
        "message_id": message.message_id,
        "accepted": list(result.accepted),
        "smtp_code": result.code,
        "smtp_reply": result.reply,
        "attempts": attempt,
        "settings_version": version,
        "server": server,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        "sent_at": time.time(),
    }
    if result.refused:
        record["refused"] = {rcpt: list(reply) for rcpt, reply in result.refused.items()}
    details: dict[str, Any] = {"message_id": message.message_id, "attempts": attempt, "server": server}
    if flagged is not None:
        record["suppressed"] = details["suppressed"] = flagged.flag()
    if attempt > 1 and (ambiguous := services.ledger.ambiguous(job.id)):
        record["ambiguous"] = ambiguous  # earlier attempts may have delivered copies (same Message-ID)
    services.ledger.mark_delivered(job.id, record, idempotent=job.idempotency_key is not None)
    # Enqueue to acceptance (/metrics' histogram), counted with the outcome.
    waited = time.time() - job.created_at
    services.outcomes.record(Outcome(SENT, job.realm, job.id, job.template, job.to, smtp_code=result.code,
                                     smtp_reply=result.reply, details=details),
                             also=lambda pipe: services.tallies.queue_delivery(pipe, TRANSACTIONAL, waited))  # fmt: skip
    return record


def dead_letter(
    services: Services, job: EmailJob, failure: DeliveryFailure, attempts: int, task: str
) -> DeadLetter:
    letter = DeadLetter(
        job_id=job.id,
        realm=job.realm,
        template=job.template,
        to=job.to,
        reason=failure.reason,
        error=failure.error,
        attempts=attempts,
        task=task,
        smtp_code=failure.smtp_code,
        job=job.model_dump(mode="json"),
        first_attempt_at=job.created_at,
    )
    bury(services, letter, {"attempts": attempts})
    return letter


def bury(services: Services, letter: DeadLetter, details: Mapping[str, Any]) -> None:
    """A job's end as a dead letter: the letter stored, the job ended in the ledger (a late copy must not
    try again), the outcome recorded (stats, webhooks). For every dead letter a task writes."""
    services.dead.add(letter)
    services.ledger.end(letter.job_id, DEAD)
    services.outcomes.record(Outcome(dead_letter_event(letter.reason), letter.realm, letter.job_id, letter.template,
                                     letter.to or None, reason=letter.reason, smtp_code=letter.smtp_code,
                                     smtp_reply=letter.error, details=details))  # fmt: skip
