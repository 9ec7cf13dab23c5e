"""The dead-letter store: jobs that could not be delivered, with their reason, re-queueable. No secrets."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from config.errors import NotFound
from config.keys import Keys
from config.names import SEND_TASK
from worker.policy import REASONS as POLICY_REASONS

# Why a job died: the words and what they mean live with the policy that decides them.
REASONS = tuple(POLICY_REASONS)


@dataclass
class DeadLetter:
    job_id: str
    realm: str
    template: str
    to: str
    reason: str
    error: str
    attempts: int
    task: str = SEND_TASK
    smtp_code: int | None = None
    job: dict[str, Any] = field(default_factory=dict)
    first_attempt_at: float | None = None
    died_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """Without the job's context (personal data, links): for listings."""
        data = self.to_dict()
        data.pop("job")
        return data


class DeadLetterStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl: int = 30 * 86_400) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl

    def add(self, letter: DeadLetter) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.keys.dead_letter(letter.job_id), json.dumps(letter.to_dict()), ex=self.ttl)
        pipe.zadd(self.keys.dead_letters(), {letter.job_id: letter.died_at})
        # The index must not outlive its letters: without this it grows by one entry per dead job forever.
        pipe.zremrangebyscore(self.keys.dead_letters(), "-inf", f"({letter.died_at - self.ttl}")
        pipe.expire(self.keys.dead_letters(), self.ttl)  # ...and goes with the last one
        pipe.execute()

    def get(self, job_id: str) -> DeadLetter:
        raw = self.redis.get(self.keys.dead_letter(job_id))
        if raw is None:
            raise NotFound(f"no dead letter {job_id!r}: see `mailworker dead list`")
        return DeadLetter(**json.loads(str(raw)))

    def list(
        self, *, realm: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Newest first. Entries whose record expired are dropped from the index on the way."""
        letters: list[DeadLetter] = []
        ids = [str(i) for i in self.redis.zrevrange(self.keys.dead_letters(), 0, -1)]
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            raws = self.redis.mget([self.keys.dead_letter(i) for i in batch])
            for job_id, raw in zip(batch, raws, strict=True):
                if raw is None:
                    self.redis.zrem(self.keys.dead_letters(), job_id)
                    continue
                letter = DeadLetter(**json.loads(str(raw)))
                if (realm is None or letter.realm == realm) and (reason is None or letter.reason == reason):
                    letters.append(letter)
                    if len(letters) >= limit:
                        return letters
        return letters

    def count(self) -> int:
        return int(self.redis.zcard(self.keys.dead_letters()))

    def remove(self, job_id: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.dead_letter(job_id))
        pipe.zrem(self.keys.dead_letters(), job_id)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def purge(
        self, *, realm: str | None = None, reason: str | None = None, older_than: float | None = None
    ) -> int:
        cutoff = time.time() - older_than if older_than is not None else None
        removed = 0
        for letter in self.list(realm=realm, reason=reason, limit=10**9):
            if cutoff is None or letter.died_at < cutoff:
                removed += self.remove(letter.job_id)
        return removed
