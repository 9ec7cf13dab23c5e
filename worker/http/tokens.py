"""API tokens: who may call the HTTP API, for which realms, with which scope.

A token is 256 random bits (`mwt_` and 43 URL-safe characters), shown once when it is created and stored
only as its SHA-256: whoever reads Redis cannot call the API with what they find there. A plain hash is
enough (no salt, no slow hash): the token is random, not a password a person chose, so there is nothing
to guess. Each token has an id (printed by `token list`, named by `token revoke`), a scope and, optionally,
the realms it is limited to.

Scopes: `producer` sends mail (emails, events, bulk, their job status); `admin` does that and manages the
realms' SMTP settings, dead letters and stats (the console signs in with an admin token).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from config.errors import InvalidInput, NotFound
from config.keys import Keys
from config.names import check_realm
from config.printable import UNSAFE

PRODUCER, ADMIN = "producer", "admin"
SCOPES = (PRODUCER, ADMIN)
TOKEN_PREFIX = "mwt_"
TOKEN_BYTES = 32  # 256 bits
MAX_NAME = 200


@dataclass(frozen=True)
class ApiToken:
    id: str
    scope: str
    realms: tuple[str, ...] = ()  # empty: every realm
    name: str = ""
    created_at: float = field(default_factory=time.time)

    def allows(self, scope: str) -> bool:
        """admin includes producer."""
        return self.scope == ADMIN or self.scope == scope

    def sees(self, realm: str) -> bool:
        return not self.realms or realm in self.realms

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "scope": self.scope, "realms": list(self.realms), "name": self.name,
                "created_at": self.created_at}  # fmt: skip


@dataclass(frozen=True)
class CreatedToken:
    token: str  # the secret: shown once, never stored
    record: ApiToken


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def check_token_request(scope: Any, realms: Any, name: Any) -> tuple[str, tuple[str, ...], str]:
    """The rules of a new token, as (field, rule) errors."""
    if scope not in SCOPES:
        raise InvalidInput.one("scope", f"must be one of {', '.join(SCOPES)}")
    if not isinstance(realms, list | tuple) or not all(isinstance(r, str) for r in realms):
        raise InvalidInput.one("realms", "must be a list of realm names")
    for realm in realms:
        check_realm(realm)
    if not isinstance(name, str) or len(name) > MAX_NAME or UNSAFE.search(name):
        raise InvalidInput.one("name", f"must be one printable line of at most {MAX_NAME} characters")
    return scope, tuple(dict.fromkeys(realms)), name


class TokenStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def create(self, scope: str, realms: list[str] | tuple[str, ...] = (), name: str = "") -> CreatedToken:
        scope, realm_names, name = check_token_request(scope, list(realms), name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        record = ApiToken(secrets.token_hex(6), scope, realm_names, name)
        digest = digest_of(token)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.api_token(digest), mapping={
            "id": record.id, "scope": scope, "realms": json.dumps(list(realm_names)), "name": name,
            "created_at": repr(record.created_at),
        })  # fmt: skip
        pipe.hset(self.keys.api_tokens(), record.id, digest)
        pipe.execute()
        return CreatedToken(token, record)

    def verify(self, token: str) -> ApiToken | None:
        """The token's record; None for anything that is not a live token."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        return self._record(self.redis.hgetall(self.keys.api_token(digest_of(token))))

    def get(self, token_id: str) -> ApiToken | None:
        digest = self.redis.hget(self.keys.api_tokens(), token_id)
        return self._record(self.redis.hgetall(self.keys.api_token(str(digest)))) if digest else None

    def list(self) -> list[ApiToken]:
        found = []
        for digest in self.redis.hvals(self.keys.api_tokens()):
            record = self._record(self.redis.hgetall(self.keys.api_token(str(digest))))
            if record is not None:
                found.append(record)
        return sorted(found, key=lambda t: t.created_at)

    def revoke(self, token_id: str) -> None:
        digest = self.redis.hget(self.keys.api_tokens(), token_id)
        if digest is None:
            raise NotFound(f"no token {token_id!r} (see `mailworker token list`)")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.api_token(str(digest)))
        pipe.hdel(self.keys.api_tokens(), token_id)
        pipe.execute()

    @staticmethod
    def _record(fields: dict[Any, Any]) -> ApiToken | None:
        if not fields:
            return None
        data = {str(k): str(v) for k, v in fields.items()}
        try:
            return ApiToken(data["id"], data["scope"], tuple(json.loads(data.get("realms") or "[]")),
                            data.get("name", ""), float(data.get("created_at") or 0))  # fmt: skip
        except (KeyError, ValueError, TypeError):
            return None
