"""Per-job bookkeeping in Redis that makes redelivery safe: delivered markers, attempt counts, claims."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from config.keys import Keys


class DeliveryLedger:
    def __init__(self, client: redis.Redis, keys: Keys, marker_ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.marker_ttl = marker_ttl

    def delivered(self, job_id: str) -> dict[str, Any] | None:
        """The record of an earlier delivery of this job, if any (redelivery after a crash, or a repeat)."""
        raw = self.redis.get(self.keys.delivered(job_id))
        return json.loads(str(raw)) if raw is not None else None

    def mark_delivered(self, job_id: str, record: dict[str, Any], *, patience: float = 10.0) -> None:
        """Right after the server accepted: a redelivered copy of the job is skipped from now on.

        The mail is already out, so a Redis blip here (a restart, a failover) is waited out for a few
        seconds rather than raised: without the marker a redelivery would send the mail a second time.
        """
        deadline = time.monotonic() + patience
        while True:
            try:
                self.redis.set(self.keys.delivered(job_id), json.dumps(record), ex=self.marker_ttl)
                return
            except redis.ConnectionError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def next_attempt(self, job_id: str) -> int:
        """Counts attempts across retries and redeliveries (Celery's own counter resets on redelivery)."""
        pipe = self.redis.pipeline()
        pipe.incr(self.keys.attempts(job_id))
        pipe.expire(self.keys.attempts(job_id), self.marker_ttl)
        attempt, _ = pipe.execute()
        return int(attempt)

    def attempts(self, job_id: str) -> int:
        return int(self.redis.get(self.keys.attempts(job_id)) or 0)

    def note_error(self, job_id: str, error: str) -> None:
        """Keep the latest failed attempt's error, so `mailworker status` can say why a job is retrying."""
        self.redis.set(self.keys.last_error(job_id), error[:1000], ex=self.marker_ttl)

    def last_error(self, job_id: str) -> str | None:
        value = self.redis.get(self.keys.last_error(job_id))
        return str(value) if value is not None else None

    def reset_attempts(self, job_id: str) -> None:
        self.redis.delete(self.keys.attempts(job_id))

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

    def claim(self, job_id: str, owner: str, ttl: int) -> bool:
        """Only one worker works on a job at a time (a redelivery while the first holder still runs).

        The claim expires by itself, so a killed worker's job can be claimed again after `ttl` seconds.
        """
        key = self.keys.claim(job_id)
        if self.redis.set(key, owner, nx=True, ex=ttl):
            return True
        return self.redis.get(key) == owner

    def release(self, job_id: str, owner: str) -> None:
        key = self.keys.claim(job_id)
        if self.redis.get(key) == owner:
            self.redis.delete(key)
