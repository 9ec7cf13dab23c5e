"""Who is signed in to the console, and whether a posted form is theirs.

A page needs a live session (worker/http/sessions.py) whose admin token still exists and is still an
admin token: every request looks the token up again, so revoking it signs its sessions out. A POST also
needs the session's CSRF token in its `csrf` field (403 otherwise): the session cookie is SameSite=Strict
already, the token is the second lock for browsers or proxies that get SameSite wrong.

The sign-in form has no session yet; it carries a token of its own, matched against a short-lived cookie
set with the form (double submit), so another site cannot sign a browser in with the attacker's token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from worker.http.auth import realm_for
from worker.http.context import HttpContext, context_of
from worker.http.sessions import COOKIE, Session
from worker.http.tokens import ADMIN, ApiToken

PREFIX = "/console"
SIGN_IN_COOKIE = "mailworker_sign_in"
SIGN_IN_COOKIE_TTL_S = 3600


class SignInNeeded(Exception):
    """No live admin session: pages redirect to the sign-in page, the JSON endpoints answer 401."""


class CsrfRefused(Exception):
    """A form posted without its CSRF token, or with another one: 403."""


@dataclass(frozen=True)
class Visitor:
    token: ApiToken
    session: Session

    @property
    def csrf(self) -> str:
        return self.session.csrf

    @property
    def who(self) -> str:
        """Who saves, kept in the history: the token's name, else its id."""
        return f"console: {self.token.name or 'token ' + self.token.id}"

    def realm(self, realm: str) -> str:
        """The realm, if this token sees it; NotFound otherwise, exactly as an unknown realm."""
        return realm_for(self.token, realm)


@dataclass(frozen=True)
class Posted:
    """A form posted by a signed-in admin with the right CSRF token."""

    visitor: Visitor
    form: dict[str, str]


def visitor(request: Request) -> Visitor:
    """The signed-in admin (a FastAPI dependency); SignInNeeded otherwise."""
    context = context_of(request)
    session = context.sessions.get(request.cookies.get(COOKIE))
    token = context.tokens.get(session.token_id) if session is not None else None
    if session is None or token is None or not token.allows(ADMIN):
        raise SignInNeeded()
    return Visitor(token, session)


async def posted(request: Request) -> Posted:
    """A posted form (a FastAPI dependency): signed in, and its `csrf` field is the session's."""
    who = visitor(request)
    form = await read_form(request)
    if not who.session.csrf_matches(form.get("csrf")):
        raise CsrfRefused()
    return Posted(who, form)


async def read_form(request: Request) -> dict[str, str]:
    """The form's text fields (the last value of a repeated name); uploads are not part of any form here."""
    data = await request.form()
    return {key: value for key, value in data.multi_items() if isinstance(value, str)}


# ---- cookies ---------------------------------------------------------------------------------------------


def set_session_cookie(response: Response, context: HttpContext, request: Request, session_id: str) -> None:
    # No max_age: the browser forgets it when it closes; Redis forgets an idle session on its own.
    response.set_cookie(COOKIE, session_id, path=PREFIX, httponly=True, samesite="strict",
                        secure=context.https(request))  # fmt: skip


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")


def sign_in_token(request: Request) -> str:
    """The sign-in form's token: the one its cookie already holds, else a new one."""
    current = request.cookies.get(SIGN_IN_COOKIE)
    return current if current and len(current) <= 100 else secrets.token_urlsafe(32)


def set_sign_in_cookie(response: Response, context: HttpContext, request: Request, token: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, token, path=PREFIX, max_age=SIGN_IN_COOKIE_TTL_S, httponly=True,
                        samesite="strict", secure=context.https(request))  # fmt: skip


def sign_in_form_matches(request: Request, form: dict[str, Any]) -> bool:
    cookie, given = request.cookies.get(SIGN_IN_COOKIE), form.get("csrf")
    return bool(cookie) and bool(given) and hmac.compare_digest(str(cookie), str(given))
