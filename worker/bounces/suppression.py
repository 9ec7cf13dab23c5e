"""The suppression list per realm: addresses that hard-bounced or complained, and what that means for a mail.

Policy (`decide`, pure): bulk notices skip a suppressed address; identity mail (verification, reset, a
security notice: every transactional job) is still sent, flagged, because the user may have fixed the
mailbox and the IAM, told by the outcome's webhook, decides what to do with the account.

Storage: a sorted set per realm (address -> when the suppression ends) that the bulk hot path asks once per
chunk (ZMSCORE: one round trip for all its recipients, expired entries read as absent), and a hash with
each entry's reason, job, status and since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from config.keys import Keys
from config.recent import Recent

SEND, SKIP, FLAG = "send", "skip", "flag"
HARD_BOUNCE, COMPLAINT = "hard_bounce", "complaint"
REASONS = (HARD_BOUNCE, COMPLAINT)
DEFAULT_TTL = 90 * 86400  # a mailbox that bounced may come back: after this the address is tried again


@dataclass(frozen=True)
class Suppression:
    address: str
    reason: str  # one of REASONS
    job_id: str | None
    since: float
    until: float
    status: str | None = None  # the DSN's status code (5.1.1), for a bounce
    diagnostic: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def flag(self) -> dict[str, Any]:
        """What a job's result and its outcome carry when identity mail went to a suppressed address."""
        return {"reason": self.reason, "since": self.since, "job_id": self.job_id}


def decide(suppressed: bool, *, identity: bool) -> str:
    """send: not suppressed; skip: suppressed bulk; flag: suppressed identity mail, sent anyway."""
    if not suppressed:
        return SEND
    return FLAG if identity else SKIP


def normal(address: str) -> str:
    return address.strip().lower()


class SuppressionList:
    def __init__(self, redis: Any, keys: Keys, ttl: int = DEFAULT_TTL, recent_seconds: float = 0.0) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        # Most realms have no suppression list: whether one exists is trusted for a moment (config/recent.py),
        # so their messages cost no look-up at all.
        self._has_list: Recent[str, bool] = Recent(recent_seconds)

    def add(self, realm: str, address: str, reason: str, *, job_id: str | None, status: str | None = None,
            diagnostic: str | None = None, now: float | None = None) -> Suppression:  # fmt: skip
        now = time.time() if now is None else now
        entry = Suppression(normal(address), reason, job_id, now, now + self.ttl, status, diagnostic)
        pipe = self.redis.pipeline()
        pipe.zadd(self.keys.suppressed(realm), {entry.address: entry.until})
        pipe.hset(self.keys.suppression(realm), entry.address, json.dumps(entry.to_json()))
        pipe.execute()
        self._has_list.forget(realm)
        return entry

    def suppressed(self, realm: str, addresses: Sequence[str], now: float | None = None) -> list[bool]:
        """For each address, is it suppressed now? One round trip however many addresses."""
        if not addresses:
            return []
        now = time.time() if now is None else now
        key = self.keys.suppressed(realm)
        if not self._has_list.get(realm, lambda: bool(self.redis.exists(key))):
            return [False] * len(addresses)
        scores = self.redis.zmscore(key, [normal(a) for a in addresses])
        return [score is not None and float(score) > now for score in scores]

    def get(self, realm: str, address: str, now: float | None = None) -> Suppression | None:
        if not self.suppressed(realm, [address], now)[0]:
            return None
        raw = self.redis.hget(self.keys.suppression(realm), normal(address))
        return _entry(raw) if raw is not None else None

    def list(self, realm: str, now: float | None = None) -> list[Suppression]:
        """The realm's current suppressions, newest first; expired ones are forgotten on the way."""
        self._forget_expired(realm, time.time() if now is None else now)
        raw = self.redis.hgetall(self.keys.suppression(realm))
        entries = [entry for value in raw.values() if (entry := _entry(value)) is not None]
        return sorted(entries, key=lambda e: e.since, reverse=True)

    def remove(self, realm: str, address: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.zrem(self.keys.suppressed(realm), normal(address))
        pipe.hdel(self.keys.suppression(realm), normal(address))
        removed, _ = pipe.execute()
        return bool(removed)

    def _forget_expired(self, realm: str, now: float) -> None:
        expired = self.redis.zrangebyscore(self.keys.suppressed(realm), "-inf", now)
        if expired:
            pipe = self.redis.pipeline()
            pipe.zrem(self.keys.suppressed(realm), *expired)
            pipe.hdel(self.keys.suppression(realm), *expired)
            pipe.execute()


def _entry(raw: str) -> Suppression | None:
    try:
        return Suppression(**json.loads(raw))
    except (ValueError, TypeError):
        return None
