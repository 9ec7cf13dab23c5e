"""Who calls: a bearer token (the API) or a console session (the web console), its scope and its realms.

401 without a valid token; 403 when its scope does not fit; a realm the token is not limited to answers 404
exactly as a realm that does not exist would (a token sees nothing of other realms, not even their names).
Failed authentications are counted per client address and minute: past
MAILWORKER_HTTP_AUTH_FAILURES_PER_MINUTE the address gets 429 until the minute is over.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Depends, Request

from config.errors import NotFound
from config.names import check_realm
from worker.http.context import HttpContext, context_of
from worker.http.errors import ApiError
from worker.http.tokens import ADMIN, PRODUCER, ApiToken

WINDOW_S = 60


class AuthFailures:
    """Failed authentications per client address in the current minute (one counter key each)."""

    def __init__(self, redis: Any, context: HttpContext) -> None:
        self.redis = redis
        self.context = context

    def _key(self, client: str, now: float) -> str:
        return self.context.keys.auth_failures(f"{client}:{int(now // WINDOW_S)}")

    def blocked(self, client: str, now: float | None = None) -> bool:
        count = self.redis.get(self._key(client, time.time() if now is None else now))
        return int(count or 0) >= self.context.settings.http_auth_failures_per_minute

    def failed(self, client: str, now: float | None = None) -> None:
        key = self._key(client, time.time() if now is None else now)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, WINDOW_S * 2)
        pipe.execute()


def refuse_if_blocked(context: HttpContext, client: str) -> None:
    if AuthFailures(context.redis, context).blocked(client):
        raise ApiError(429, "too many failed authentications from this address: wait a minute",
                       {"Retry-After": str(WINDOW_S)})  # fmt: skip


def authenticate(context: HttpContext, client: str, header: str | None) -> ApiToken:
    """The token of an `Authorization: Bearer ...` header; 401 (counted) or 429."""
    refuse_if_blocked(context, client)
    scheme, _, token = (header or "").partition(" ")
    record = context.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None
    if record is None:
        AuthFailures(context.redis, context).failed(client)
        raise ApiError(401, "a valid API token is required (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": 'Bearer realm="mailworker"'})  # fmt: skip
    return record


def bearer(request: Request) -> ApiToken:
    context = context_of(request)
    return authenticate(context, context.client(request), request.headers.get("authorization"))


def producer(token: ApiToken = Depends(bearer)) -> ApiToken:  # noqa: B008 (FastAPI's way)
    if not token.allows(PRODUCER):
        raise ApiError(403, "this token's scope does not allow sending mail")
    return token


def admin(token: ApiToken = Depends(bearer)) -> ApiToken:  # noqa: B008
    if not token.allows(ADMIN):
        raise ApiError(403, "this token's scope is producer: an admin token is needed")
    return token


def realm_for(token: ApiToken, realm: str) -> str:
    """The realm, if the token may see it; a realm outside its realms is 'not found', as an unknown one."""
    check_realm(realm)
    if not token.sees(realm):
        raise NotFound(not_found(realm))
    return realm


def not_found(realm: str) -> str:
    return f"realm {realm} not found"
