"""What happens after a failure: the one place that decides retry, dead letter or stop, and how long to wait.

Delivery (tasks/runner.py), bulk (worker/bulk/chunks.py) and the circuit breaker only ask this module; changing
how a 4xx is treated, or when a job gives up, changes this module and its tests (tests/test_policy.py).

- `classify`: an SMTP failure -> RETRY, PERMANENT or SETTINGS (a table, first match wins);
- `reason_of`: the dead-letter reason a failure ends with (`REASONS` lists them all);
- `counts_against`: which failures count against a realm's circuit breaker ("nobody answers there");
- `fails_over`: whether an attempt the primary SMTP server could not take goes to the secondary at once;
- `chunk_action`: what a bulk chunk does with one message's failure;
- `classify_lookup`: a failed user look-up in the IAM's admin API (an event that names only a user id);
- `RetryPolicy`: backoff, and when to stop (the link's expiry, the age limit, ambiguous attempts).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker.smtp.failures import AUTH_KINDS, NO_ANSWER, TLS_KINDS, Kind, SmtpFailure


class Outcome(Enum):
    RETRY = "retry"  # transient: try again later
    PERMANENT = "permanent"  # this message will never go through: dead letter at once
    SETTINGS = "settings"  # the realm's SMTP settings are wrong: dead letter, tell the admin


# The codes by which a server says "your credentials / auth setup is wrong".
AUTH_FAILURE_CODES = frozenset({530, 534, 535, 538})
SESSION_STAGES = ("resolve", "connect", "tls", "ehlo", "auth")

# The decision table, first match wins: (why, test, outcome). docs/delivery.md shows it (a test checks).
CLASSIFICATION: tuple[tuple[str, Callable[[SmtpFailure], bool], Outcome], ...] = (
    ("the data went out, the reply never came (ambiguous)", lambda e: e.ambiguous, Outcome.RETRY),
    ("message needs SMTPUTF8, server lacks it", lambda e: e.kind == Kind.SMTPUTF8, Outcome.PERMANENT),
    ("TLS: certificate, host name, handshake, no StartTLS", lambda e: e.kind in TLS_KINDS, Outcome.SETTINGS),
    ("auth on, but no usable AUTH (or no XOAUTH2 token)", lambda e: e.kind in AUTH_KINDS, Outcome.SETTINGS),
    ("no reply: refused, time-out, disconnect, DNS", lambda e: e.code is None, Outcome.RETRY),
    ("4xx: transient", lambda e: 400 <= (e.code or 0) < 500, Outcome.RETRY),
    ("530/534/535/538: authentication", lambda e: e.code in AUTH_FAILURE_CODES, Outcome.SETTINGS),
    (
        "5xx while setting up (greeting, EHLO, STARTTLS, AUTH): the server refuses us",
        lambda e: e.stage in SESSION_STAGES and 500 <= (e.code or 0) < 600,
        Outcome.SETTINGS,
    ),
    ("other 5xx: the message or recipient", lambda e: 500 <= (e.code or 0) < 600, Outcome.PERMANENT),
)


def classify(error: SmtpFailure) -> Outcome:
    """What to do after a failure: retry later, dead-letter the message, or flag the settings."""
    for _why, test, outcome in CLASSIFICATION:
        if test(error):
            return outcome
    return Outcome.RETRY  # an odd code (e.g. 3xx where 2xx was due): the server is confused, try later


# Why a job died: each a word operators filter on (`mailworker dead list --reason`).
REASONS: dict[str, str] = {
    "permanent": "the server refused this message or recipient for good (5xx)",
    "settings": "the realm's SMTP settings are wrong (auth, TLS) or missing",
    "template": "the template failed to render (a missing variable, a realm template's bomb)",
    "expired": "the link would be dead before another attempt could deliver it",
    "exhausted": "retried for MAILWORKER_RETRY_MAX_AGE (or MAILWORKER_MAX_ATTEMPTS) without success",
    "ambiguous": "the server took the data twice without confirming: it may have delivered it",
    "invalid": "input that could not become a job (an ingest entry, a bad address in bulk)",
    "internal": "an unexpected error (the exception type is in the error): a bug to report",
    "cancelled": "the bulk job was cancelled",
    "recipient": "the event's user has no e-mail address, or the IAM does not know the user id",
    "lookup": "the IAM's admin API refused the user look-up (iam_client_id, iam_client_secret, the "
    "service account's view-users role) or the realm has no look-up configured (iam_url)",
    "webhook": "a delivery webhook's receiver did not answer 2xx for about a day (retried with backoff)",
}
RETRY = "retry"  # a DeliveryFailure's reason while it is still transient


def reason_of(error: SmtpFailure) -> str:
    """RETRY while transient, else the dead-letter reason ("permanent" or "settings")."""
    outcome = classify(error)
    return RETRY if outcome is Outcome.RETRY else outcome.value


def counts_against(error: SmtpFailure) -> bool:
    """A failure that counts against the realm's circuit breaker: the server never answered while a session
    was being set up (it may have held a worker process for a full time-out). A failure within a
    transaction (a slow or lost reply to the data) proves the server alive; so does any reply."""
    return (
        error.code is None
        and error.kind in NO_ANSWER
        and error.stage in (*SESSION_STAGES, "noop")
        and not error.ambiguous
    )


# SMTP failover (docs/delivery.md#smtp-failover), first match wins: (why, test, go to the secondary now).
# `None` stands for "the primary was not tried: its circuit breaker is open".
FAILOVER: tuple[tuple[str, Callable[[SmtpFailure | None], bool], bool], ...] = (
    ("the primary's circuit breaker is open", lambda e: e is None, True),
    ("the data went out, the reply never came (ambiguous): a copy may be there", lambda e: bool(e and e.ambiguous),
     False),
    ("421: the server is closing (at the greeting or any stage)", lambda e: bool(e and e.code == 421), True),
    ("no reply: refused, time-out, no greeting, closed, network, DNS",
     lambda e: bool(e and e.code is None and e.kind in (*NO_ANSWER, Kind.CLOSED)), True),
    ("the TLS handshake failed", lambda e: bool(e and e.kind == Kind.TLS_HANDSHAKE), True),
    ("any other reply (4xx, 5xx), certificate, auth, message: the server answered", lambda e: True, False),
)  # fmt: skip


def fails_over(error: SmtpFailure | None) -> bool:
    """True: deliver this attempt on the realm's secondary server at once (same attempt, no backoff).
    `error` is the primary's failure, None when the primary was not tried (its circuit breaker is open)."""
    for _why, test, go in FAILOVER:
        if test(error):
            return go
    return False


class ChunkAction(Enum):
    FAILED = "failed"  # dead-letter this recipient (permanent)
    RECONNECT = "reconnect"  # the session ended before this message: send it again on a fresh one now
    STOP = "stop"  # the settings are wrong: the whole job stops
    DEFER = "defer"  # try this recipient again with the chunk's retry (4xx, ambiguous)


def chunk_action(error: SmtpFailure) -> ChunkAction:
    """What a bulk chunk does with one message's failure."""
    if error.ambiguous:
        return ChunkAction.DEFER  # never at once: the server may have it (the same Message-ID later)
    outcome = classify(error)
    if outcome is Outcome.PERMANENT:
        return ChunkAction.FAILED
    if outcome is Outcome.SETTINGS:
        return ChunkAction.STOP
    return ChunkAction.RECONNECT if error.reconnect else ChunkAction.DEFER


# A user look-up (worker/delivery/iam_users.py) by the HTTP status of its failure (None: no answer, or no
# token because the token endpoint did not answer). First match wins; docs/delivery.md#dead-letters says it.
LOOKUP_CLASSIFICATION: tuple[tuple[str, Callable[[int | None], bool], Outcome], ...] = (
    ("no answer: refused, time-out, DNS", lambda s: s is None, Outcome.RETRY),
    ("408, 429, 5xx: the IAM is busy or down", lambda s: s in (408, 429) or (s or 0) >= 500, Outcome.RETRY),
    ("404: the IAM does not know the user", lambda s: s == 404, Outcome.PERMANENT),
    ("401, 403, other 4xx, 3xx: the client or its rights are wrong", lambda s: True, Outcome.SETTINGS),
)
LOOKUP_REASONS = {Outcome.RETRY: RETRY, Outcome.PERMANENT: "recipient", Outcome.SETTINGS: "lookup"}


def classify_lookup(status: int | None) -> Outcome:
    for _why, test, outcome in LOOKUP_CLASSIFICATION:
        if test(status):
            return outcome
    return Outcome.SETTINGS


def lookup_reason(status: int | None) -> str:
    """RETRY while transient, else the dead-letter reason ("recipient" or "lookup")."""
    return LOOKUP_REASONS[classify_lookup(status)]


class Decision(Enum):
    RETRY = "retry"
    DEAD_EXHAUSTED = "exhausted"
    DEAD_EXPIRED = "expired"
    DEAD_AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff until the job's link expires, or for `max_age` seconds when it has none.

    An outage of the provider (451 to everything for ten minutes) must not kill mail that could still be
    delivered: MTAs keep trying for days, identity mail is stale after about a day, and a link mail is
    worth sending until its link dies.
    """

    max_attempts: int = 0  # 0: no limit by count, only by time
    base_delay: float = 5.0
    max_delay: float = 300.0
    max_age: float = 86_400.0
    # A retry landing this close to the link's expiry is not worth it: the user would open a dead link.
    min_useful_life: float = 10.0
    # Attempts whose data went out without a reply: each may have delivered a copy. After this many the job
    # stops, with a dead letter that says the mail may have arrived (bounds the copies to this many).
    max_ambiguous: int = 2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter ("equal jitter": half fixed, half random) after `attempt` failures.

        The random half spreads retries of many jobs that failed together (a server back from an outage).
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(max(attempt - 1, 0), 60))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def decide(
        self,
        attempt: int,
        *,
        now: float,
        created_at: float,
        expires_at: float | None,
        delay: float,
        ambiguous: int = 0,
    ) -> tuple[Decision, float]:
        """After failed attempt number `attempt` (1-based): retry after the returned delay, or stop and why.

        The delay is shortened so that the last retry still lands while the link is alive.
        """
        if ambiguous >= self.max_ambiguous:
            return Decision.DEAD_AMBIGUOUS, 0.0
        if self.max_attempts and attempt >= self.max_attempts:
            return Decision.DEAD_EXHAUSTED, 0.0
        deadline = expires_at if expires_at is not None else created_at + self.max_age
        useful = deadline - self.min_useful_life - now
        if useful <= 0:
            # A reset link delivered after it expired is useless, even harmful: stop instead.
            return (Decision.DEAD_EXPIRED if expires_at is not None else Decision.DEAD_EXHAUSTED), 0.0
        return Decision.RETRY, max(0.0, min(delay, useful))
