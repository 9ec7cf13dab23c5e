"""SMTP failover: an attempt the realm's primary server could not take goes to its secondary at once.

Whether to go is the policy's (worker/policy.py `fails_over`): the primary's circuit breaker is open, or it
failed with a connection-class error (refused, time-out, no greeting, closed, TLS handshake, 421); never
after a 4xx/5xx reply, and never after an ambiguous attempt (the data went out: a copy may be there).

The secondary is a second settings record of the realm (config/store.py `for_server`), read through its own
cache only when a failover happens: the primary's happy path costs no Redis command more. It has a circuit
breaker of its own (`realm:secondary`, config/keys.py `channel`); when that is open too, the attempt fails
as the primary's failure says (the runner retries it with backoff).
"""

from __future__ import annotations

import logging
from typing import Any

from config.errors import NotFound, StoreUnavailable
from config.keys import SECONDARY, channel
from config.smtp import SmtpSettings
from worker.delivery.breaker import CircuitBreaker
from worker.delivery.deliver import DeliveryFailure, Services, deliver
from worker.jobs.model import EmailJob
from worker.policy import counts_against, fails_over
from worker.smtp import SmtpFailure

log = logging.getLogger(__name__)

FAILOVER = "failover"  # the stats counter of attempts the secondary took over (`mailworker stats`)


def smtp_cause(failure: DeliveryFailure) -> SmtpFailure | None:
    """The SMTP failure behind a failed attempt (deliver() raises while handling it), if there was one."""
    cause = failure.__cause__ or failure.__context__
    return cause if isinstance(cause, SmtpFailure) else None


def secondary_settings(services: Services, realm: str) -> tuple[int, SmtpSettings] | None:
    """(version, settings) of the realm's saved secondary server; None when it has none (or unusable)."""
    if services.secondary is None or services.secondary.store.version(realm) == 0:
        return None  # none saved: one HGET, for the realms without one whose primary is dark
    try:
        return services.secondary.get(realm)
    except (NotFound, StoreUnavailable):
        return None


def deliver_on_secondary(
    job: EmailJob, services: Services, breaker: CircuitBreaker, *, attempt: int, why: str
) -> dict[str, Any] | None:
    """Deliver this attempt on the secondary: the result, None when there is no secondary to go to (none
    saved, or its circuit is open), or DeliveryFailure raised with the secondary's own failure."""
    found = secondary_settings(services, job.realm)
    if found is None:
        return None
    settings = found[1]
    name, endpoint = channel(job.realm, SECONDARY), f"{settings.host}:{settings.port}"
    verdict = breaker.check(name, endpoint, probe_ttl=settings.connect_timeout + 5)
    if not verdict.allowed:
        return None
    services.stats.count(job.realm, FAILOVER)
    log.info("job %s: realm %s fails over to its secondary SMTP server (%s)", job.id, job.realm, why)
    try:
        result = deliver(job, services, attempt=attempt, realm_settings=found, server=SECONDARY)
    except DeliveryFailure as failure:
        cause = smtp_cause(failure)
        if cause is not None and counts_against(cause):
            breaker.failure(name, endpoint, failure.error)
        elif cause is not None and verdict.tracked:
            breaker.success(name)
        raise DeliveryFailure(failure.reason, f"secondary: {failure.error}", failure.smtp_code,
                              ambiguous=failure.ambiguous) from cause  # fmt: skip
    if verdict.tracked:
        breaker.success(name)
    return result


def after_the_primary(
    job: EmailJob, services: Services, breaker: CircuitBreaker, endpoint: str, *, attempt: int,
    failed: DeliveryFailure | None,
) -> dict[str, Any] | DeliveryFailure | None:  # fmt: skip
    """The primary could not take attempt `attempt` (`failed`: its failure; None: its circuit is open).

    The secondary's result when the policy sends the attempt there and it took it; the secondary's own
    failure when it failed too; None when the attempt stays the primary's (the caller goes on as without a
    secondary: retry, dead letter, or wait out the cool-off)."""
    cause = smtp_cause(failed) if failed is not None else None
    if (failed is not None and cause is None) or not fails_over(cause):
        return None
    why = f"primary {endpoint}: " + (str(cause) if cause is not None else "circuit open")
    try:
        return deliver_on_secondary(job, services, breaker, attempt=attempt, why=why)
    except DeliveryFailure as second:
        return second
