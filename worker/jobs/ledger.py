"""Per-job bookkeeping in Redis that makes redelivery safe: one small hash per job, and the cooldown.

`job:<id>` holds, as fields, everything the workers need to know about a job across retries, redeliveries
and restarts, and expires: a day after its last attempt while it may retry, an hour after it ended (only a late copy
asks then; the result says the rest), or `MAILWORKER_DELIVERED_MARKER_TTL` for a job with an idempotency
key (a repeat is recognised that long):

    attempts    delivery attempts so far (Celery's own counter starts again on a redelivery)
    data_out    the attempt that was sending the data last: an attempt whose process died after that
                point counts as ambiguous when another worker takes the job over
    ambiguous   attempts whose data went out without the server's reply (the mail may have arrived)
    last_error  the error of the latest failed attempt, for `mailworker status`
    delivered   JSON record written right after the server accepted: a redelivered copy is skipped
    state       how the job ended (sent, dead, dropped): a late copy of an ended job does nothing
    started_at  when an event's first attempt ran: its user look-up retries are timed from it

One key instead of one per fact keeps a flood of 50,000 jobs at one key each (plus its result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from config.keys import Keys

SENT, DEAD, DROPPED = "sent", "dead", "dropped"
# More commands for the same round trip (the metrics' counters, worker/outcomes/tallies.py).
Also = Callable[[Any], None] | None
# What the delivered record keeps of a delivery's result: enough for a redelivered copy's answer and for
# `status`, not the whole result (that is the Celery result's job, kept as long).
DELIVERED_FIELDS = ("message_id", "sent_at", "smtp_code", "ambiguous")


class DeliveryLedger:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        ttl: int,
        idempotent_ttl: int | None = None,
        ended_ttl: int = 3600,
    ) -> None:
        self.redis = client
        self.keys = keys
        # While a job runs, its bookkeeping lives as long as it may retry (refreshed on every attempt).
        self.ttl = ttl
        # Once it ended, only a late copy still asks (a lease hand-back: seconds; the sweeper: its grace),
        # and its result says the rest. An idempotency key is remembered longer: repeats come later.
        self.ended_ttl = min(ttl, ended_ttl)
        self.idempotent_ttl = max(ttl, idempotent_ttl or ttl)

    def _write(self, job_id: str, mapping: Mapping[Any, Any], ttl: int | None = None, *,
               forget: tuple[str, ...] = (), also: Also = None) -> None:  # fmt: skip
        key = self.keys.job(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=mapping)
        if forget:
            pipe.hdel(key, *forget)
        pipe.expire(key, ttl or self.ttl)
        if also is not None:
            also(pipe)
        pipe.execute()

    def fields(self, job_id: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.redis.hgetall(self.keys.job(job_id)).items()}

    def delivered(self, job_id: str) -> dict[str, Any] | None:
        """The record of an earlier delivery of this job, if any (redelivery after a crash, or a repeat)."""
        raw = self.redis.hget(self.keys.job(job_id), "delivered")
        return json.loads(str(raw)) if raw is not None else None

    def mark_delivered(
        self, job_id: str, record: dict[str, Any], *, idempotent: bool = False, patience: float = 10.0,
        also: Also = None,
    ) -> None:  # fmt: skip
        """Right after the server accepted: a redelivered copy of the job is skipped from now on.

        The mail is already out, so a Redis blip here (a restart, a failover) is waited out for a few
        seconds rather than raised: without the record a redelivery would send the mail a second time.
        """
        deadline = time.monotonic() + patience
        kept = json.dumps({name: record[name] for name in DELIVERED_FIELDS if name in record})
        while True:
            try:
                ttl = self.idempotent_ttl if idempotent else self.ended_ttl
                # data_out and last_error stay: `delivered` outranks both for every reader (died_after_data,
                # status), and an HDEL fewer is one Redis command a message.
                self._write(job_id, {"delivered": kept, "state": SENT}, ttl, also=also)
                return
            except redis.ConnectionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def end(self, job_id: str, state: str) -> None:
        """The job ended without a delivery (dead-lettered, dropped): a late copy must not try again."""
        self._write(job_id, {"state": state}, self.ended_ttl, forget=("data_out",))

    def state(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "state")
        return str(value) if value is not None else None

    def next_attempt(self, job_id: str) -> int:
        """Counts attempts across retries and redeliveries (Celery's own counter resets on redelivery).

        No EXPIRE here: every attempt ends in a write that sets the hash's life (delivered, a retry's error,
        an end), and a process that dies mid-attempt leaves the job to a worker that ends it.
        """
        return int(self.redis.hincrby(self.keys.job(job_id), "attempts", 1))

    def started(self, job_id: str, now: float) -> float:
        """When the job's first attempt ran (`now` on the first call): a retry's age is counted from it."""
        key = self.keys.job(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, "started_at", now)
        pipe.hget(key, "started_at")
        pipe.expire(key, self.ttl)
        _, started, _ = pipe.execute()
        return float(started)

    def attempts(self, job_id: str) -> int:
        return int(self.redis.hget(self.keys.job(job_id), "attempts") or 0)

    def note_ambiguous(self, job_id: str) -> int:
        """An attempt whose data went out and whose reply never came; returns how many so far."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.keys.job(job_id), "ambiguous", 1)
        pipe.hdel(self.keys.job(job_id), "data_out")  # this attempt's outcome is recorded now
        count, _ = pipe.execute()
        return int(count)

    def ambiguous(self, job_id: str) -> int:
        return int(self.redis.hget(self.keys.job(job_id), "ambiguous") or 0)

    def note_data_out(self, job_id: str, attempt: int) -> None:
        """Attempt `attempt` is about to send the message's data: the server may have it from now on."""
        self.redis.hset(self.keys.job(job_id), "data_out", attempt)

    def note_error(self, job_id: str, error: str, also: Also = None) -> None:
        """Keep the latest failed attempt's error, so `mailworker status` can say why a job is retrying."""
        key = self.keys.job(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, "last_error", error[:1000])
        pipe.hdel(key, "data_out")  # the attempt's outcome is recorded: not a death after the data
        pipe.expire(key, self.ttl)
        if also is not None:
            also(pipe)
        pipe.execute()

    def last_error(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "last_error")
        return str(value) if value is not None else None

    def reset(self, job_id: str) -> None:
        """A dead job sent again on purpose (`dead requeue`): it starts from zero."""
        self.redis.hdel(self.keys.job(job_id), "attempts", "ambiguous", "last_error", "state", "started_at")

    def admit(self, realm: str, template: str, recipient: str, job_id: str, cooldown: int) -> bool:
        """At most one mail per recipient and template per `cooldown` seconds (e-mail bombing guard).

        The first job takes the slot; its own retries and redeliveries pass, any other job is refused.
        """
        if cooldown <= 0:
            return True
        key = self.keys.cooldown(realm, template, recipient)
        if self.redis.set(key, job_id, nx=True, ex=cooldown):
            return True
        return self.redis.get(key) == job_id


def died_after_data(facts: dict[str, str]) -> bool:
    """The job's last attempt sent its data and nobody recorded how it ended: its process died there, so
    the server may have the mail (an ambiguous attempt)."""
    return (
        "delivered" not in facts
        and "state" not in facts
        and facts.get("data_out") is not None
        and facts.get("data_out") == facts.get("attempts")
    )
