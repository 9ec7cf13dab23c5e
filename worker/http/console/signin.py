"""Sign-in with an admin token, and sign-out.

A failed sign-in counts against the same per-address limit as a failed API authentication
(worker/http/auth.py): pasting tokens into the form is no faster a way to guess one than the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from worker.http.auth import WINDOW_S, AuthFailures
from worker.http.console.access import (
    PREFIX,
    SIGN_IN_COOKIE,
    CsrfRefused,
    Posted,
    clear_session_cookie,
    posted,
    read_form,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in_form_matches,
    sign_in_token,
)
from worker.http.console.views import page
from worker.http.context import context_of
from worker.http.sessions import COOKIE
from worker.http.tokens import ADMIN

router = APIRouter()


def sign_in_page(request: Request, status: int = 200, error: str | None = None) -> Response:
    token = sign_in_token(request)
    response = page("sign_in.html", None, status, csrf=token, error=error)
    set_sign_in_cookie(response, context_of(request), request, token)
    return response


@router.get("/sign-in")
def sign_in_form(request: Request) -> Response:
    return sign_in_page(request)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    if not sign_in_form_matches(request, form):
        raise CsrfRefused()
    context = context_of(request)
    failures = AuthFailures(context.redis, context)
    client = context.client(request)
    if failures.blocked(client):
        response = sign_in_page(request, 429, "Too many failed sign-ins from this address: wait a minute.")
        response.headers["Retry-After"] = str(WINDOW_S)
        return response
    token = context.tokens.verify(form.get("token", "").strip())
    if token is None:
        failures.failed(client)
        return sign_in_page(request, 401, "That is not a valid token.")
    if not token.allows(ADMIN):
        return sign_in_page(request, 403, "That is a producer token: the console needs an admin token.")
    session_id, _ = context.sessions.open(token.id)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_session_cookie(response, context, request, session_id)
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX, httponly=True, samesite="strict")  # used up
    return response


@router.post("/sign-out")
def sign_out(request: Request, _: Posted = Depends(posted)) -> Response:  # noqa: B008 (FastAPI's way)
    context_of(request).sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    clear_session_cookie(response)
    return response
