"""Web console sessions: signed in with an admin token, then a cookie naming a session in Redis.

The cookie holds a random session id (256 bits); Redis holds only its SHA-256, with the token id it was
opened with and the session's CSRF token, and forgets it after MAILWORKER_HTTP_SESSION_TTL seconds without
a request. Revoking the token ends its sessions: every request looks the token up again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from config.keys import Keys

COOKIE = "mailworker_session"


@dataclass(frozen=True)
class Session:
    token_id: str
    csrf: str

    def csrf_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf, str(given))


class SessionStore:
    def __init__(self, redis: Any, keys: Keys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def open(self, token_id: str) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(token_id, secrets.token_urlsafe(32))
        key = self._key(session_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"token_id": token_id, "csrf": session.csrf})
        pipe.expire(key, self.ttl)
        pipe.execute()
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session, its time to live renewed; None for anything else."""
        if not session_id or len(session_id) > 100:
            return None
        key = self._key(session_id)
        fields = {str(k): str(v) for k, v in self.redis.hgetall(key).items()}
        if "token_id" not in fields or "csrf" not in fields:
            return None
        self.redis.expire(key, self.ttl)
        return Session(fields["token_id"], fields["csrf"])

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 100:
            self.redis.delete(self._key(session_id))

    def _key(self, session_id: str) -> str:
        return self.keys.console_session(hashlib.sha256(session_id.encode()).hexdigest())
