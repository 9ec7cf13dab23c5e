"""The pure decisions of delivery webhooks, tested as tables: which endpoints get an outcome, what they
get (the payload), the webhook id a receiver dedupes by, and what an attempt's answer leads to."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput
from worker.outcomes.outcome import BULK_FINISHED, EVENTS, Outcome

TEST_EVENT = "test"  # the ping of `mailworker webhook test`; no endpoint subscribes to it
# Backoff: 30 s doubling to an hour, for about a day (Standard Webhooks receivers expect retries this long);
# then a dead letter (reason `webhook`) that `mailworker dead requeue` sends again.
FIRST_DELAY_S = 30.0
MAX_DELAY_S = 3600.0
GIVE_UP_AFTER_S = 86_400.0
# 410 Gone: the receiver says the endpoint is no more (Standard Webhooks): it is disabled, not retried.
GONE = 410


def check_events(field: str, events: Iterable[str]) -> tuple[str, ...]:
    """The event types, validated, in EVENTS' order; InvalidInput naming the field for an unknown one."""
    chosen = {e.strip() for e in events if e.strip()}
    unknown = sorted(chosen - set(EVENTS))
    if unknown or not chosen:
        raise InvalidInput.one(field, f"{'unknown event ' + ', '.join(unknown) if unknown else 'no event'}: "
                                      f"choose from {', '.join(EVENTS)}")  # fmt: skip
    return tuple(e for e in EVENTS if e in chosen)


def wanted(outcome: Outcome) -> bool:
    """A bulk chunk's counts are not news for webhooks (one per recipient would flood the receiver): a bulk
    job is reported once, by `bulk.finished`."""
    return not outcome.bulk or outcome.event == BULK_FINISHED


def subscribed(endpoints: Sequence[Any], event: str) -> list[Any]:
    """The enabled endpoints subscribed to `event` (anything with .events and .disabled)."""
    return [e for e in endpoints if event in e.events and not e.disabled]


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def payload(outcome: Outcome) -> dict[str, Any]:
    """What the receiver gets: the outcome's public fields. An Outcome never holds a secret or the mail's
    context (worker/outcomes/outcome.py), and `details` is limited to plain values here."""
    data: dict[str, Any] = {
        "job_id": outcome.job_id,
        "realm": outcome.realm,
        "template": outcome.template,
        "to": outcome.to,
        "outcome": outcome.event,
        "reason": outcome.reason,
        "smtp_code": outcome.smtp_code,
        "smtp_reply": outcome.smtp_reply,
        "at": iso(outcome.at),
    }
    if outcome.bulk and outcome.event != BULK_FINISHED:
        data["count"] = outcome.count
    for name, value in outcome.details.items():
        if isinstance(value, str | int | float | bool) and name not in data:
            data[name] = value
    return {"type": outcome.event, "timestamp": iso(outcome.at), "data": data}


def webhook_id(endpoint_id: str, outcome: Outcome) -> str:
    """Stable for one outcome and one endpoint: the same across retries, and the same when a job's ending
    is recorded twice (a redelivered task), so the receiver's dedupe catches both."""
    seed = "\0".join((endpoint_id, outcome.event, outcome.job_id, outcome.to or "", str(outcome.bulk)))
    return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


# A delivery whose endpoint has no free slot waits, without counting an attempt: briefly at first (a burst
# to a healthy receiver drains in milliseconds), longer each time (a receiver that hangs holds its slots
# for a whole deadline; waiting in short steps would only churn the queue).
SLOT_WAIT_S = 0.1
MAX_SLOT_WAIT_S = 1.0


def slot_wait(deferrals: int) -> float:
    """The wait of a delivery that found its endpoint busy `deferrals` times before."""
    return min(MAX_SLOT_WAIT_S, SLOT_WAIT_S * 2 ** min(max(deferrals, 0), 10))


@dataclass(frozen=True)
class Schedule:
    first_delay: float = FIRST_DELAY_S
    max_delay: float = MAX_DELAY_S
    give_up_after: float = GIVE_UP_AFTER_S

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        return min(self.max_delay, self.first_delay * 2 ** min(max(attempt - 1, 0), 20))


DEFAULT_SCHEDULE = Schedule()


@dataclass(frozen=True)
class Step:
    action: str  # DONE | RETRY | DEAD | GONE_STEP
    delay: float = 0.0


DONE, RETRY, DEAD, GONE_STEP = "done", "retry", "dead", "gone"


def next_step(status: int | None, attempt: int, first_at: float, now: float,
              schedule: Schedule = DEFAULT_SCHEDULE) -> Step:  # fmt: skip
    """After an attempt: a 2xx is delivered; 410 disables the endpoint; anything else (another status, no
    answer: `status` None) is tried again after the schedule's delay, unless that would pass `give_up_after`
    since the first attempt: then a dead letter."""
    if status is not None and 200 <= status < 300:
        return Step(DONE)
    if status == GONE:
        return Step(GONE_STEP)
    delay = schedule.delay(attempt)
    if now + delay - first_at > schedule.give_up_after:
        return Step(DEAD)
    return Step(RETRY, delay)
