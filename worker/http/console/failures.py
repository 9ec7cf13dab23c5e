"""The console's errors as pages: the service's errors (config/errors.py) with the status the API gives
them, a missing session as a redirect to the sign-in page (401 for the JSON the pages poll)."""

from __future__ import annotations

import logging
import uuid

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.errors import ConfigError, ConflictError, InvalidInput, NotFound, Unavailable
from worker.http.console.access import PREFIX, CsrfRefused, SignInNeeded
from worker.http.console.views import error_page

log = logging.getLogger("mailworker.http.console")

DATA_PREFIX = f"{PREFIX}/data/"  # the JSON the pages poll: no redirects there


def install(console: FastAPI) -> None:
    @console.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _: SignInNeeded) -> Response:
        if request.url.path.startswith(DATA_PREFIX):
            return JSONResponse({"error": "sign in to the console first"}, status_code=401)
        return RedirectResponse(f"{PREFIX}/sign-in", status_code=303)

    @console.exception_handler(CsrfRefused)
    async def _csrf(_: Request, __: CsrfRefused) -> Response:
        return error_page(
            403, "Forbidden", "The form was not sent with its CSRF token: reload the page and try again."
        )

    @console.exception_handler(NotFound)
    async def _not_found(_: Request, error: NotFound) -> Response:
        return error_page(404, "Not found", str(error))

    @console.exception_handler(InvalidInput)
    async def _invalid(_: Request, error: InvalidInput) -> Response:
        rules = "; ".join(f"{field}: {rule}" if field else rule for field, rule in error.problems)
        return error_page(422, "Not valid", rules)

    @console.exception_handler(RequestValidationError)
    async def _request(_: Request, error: RequestValidationError) -> Response:
        return error_page(422, "Not valid", "the request is missing a field or has a wrong one")

    @console.exception_handler(ConflictError)
    async def _conflict(_: Request, error: ConflictError) -> Response:
        return error_page(409, "Conflict", str(error))

    @console.exception_handler(Unavailable)
    async def _unavailable(_: Request, error: Unavailable) -> Response:
        return error_page(503, "Unavailable", str(error))

    @console.exception_handler(redis.RedisError)
    @console.exception_handler(OperationalError)
    async def _store(_: Request, error: Exception) -> Response:
        log.warning("Redis or the broker failed: %s", error)
        return error_page(503, "Unavailable", "the store or the broker is unavailable: try again")

    @console.exception_handler(ConfigError)
    async def _config(_: Request, error: ConfigError) -> Response:
        log.error("configuration: %s", error)
        return error_page(500, "Configuration", str(error))

    @console.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        return error_page(error.status_code, "Error", str(error.detail))

    @console.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        log.error("%s %s failed (incident %s)", request.method, request.url.path, incident, exc_info=error)
        return error_page(500, "Internal error", f"something went wrong on our side (incident {incident})")
