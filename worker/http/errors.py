"""Errors as HTTP answers: the service's one exception tree (config/errors.py) mapped to status codes.

    InvalidInput      422  {"errors": [{"field": "to", "rule": "..."}]}: the same rule text as the Python API
    NotFound          404  {"error": "..."}
    ConflictError     409  {"error": "..."}
    Unavailable       503  {"error": "..."} with Retry-After: try again (Redis, a worker, the store)
    ConfigError       500  {"error": "..."}: the server's own configuration, said in its log too
    malformed JSON    400, a body over the limit 413, no or a bad token 401, a scope or realm not granted 403
    (a realm outside a token's realms is 404, as one that does not exist), too many failed sign-ins 429

Nothing else leaves as a 500 with a traceback: an unexpected exception is logged with it and answered
`{"error": "internal error", "id": ...}`, the id naming the log line.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.errors import ConfigError, ConflictError, InvalidInput, NotFound, Unavailable

log = logging.getLogger("mailworker.http")

RETRY_AFTER_S = 5
# pydantic's words for what FastAPI checks itself, in the service's (config/smtp.py says it so too).
RULES = {"missing": "is required", "extra_forbidden": "is not a field", "model_attributes_type": "must be a JSON object",
         "dict_type": "must be a JSON object"}  # fmt: skip


class ApiError(Exception):
    """An answer other than the service's own errors: 400, 401, 403, 413, 429."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def problems_body(error: InvalidInput) -> dict[str, Any]:
    return {"errors": [{"field": field, "rule": rule} for field, rule in error.problems]}


def validation_problems(error: RequestValidationError) -> InvalidInput:
    """FastAPI's own checks (a path or query parameter, a body that is not an object) in our shape."""
    problems = []
    for item in error.errors():
        where = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if item.get("type") == "json_invalid":
            raise ApiError(400, f"the body is not JSON: {item.get('msg', '')}")
        rule = RULES.get(
            str(item.get("type")), str(item.get("msg", "is not valid")).removeprefix("Value error, ")
        )
        problems.append((".".join(where), rule))
    return InvalidInput(problems or [("", "the request is not valid")])


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, error: InvalidInput) -> JSONResponse:
        return JSONResponse(problems_body(error), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, error: RequestValidationError) -> JSONResponse:
        try:
            problems = validation_problems(error)
        except ApiError as bad:
            return JSONResponse(error_body(str(bad)), status_code=bad.status)
        return JSONResponse(problems_body(problems), status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, error: NotFound) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=404)

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, error: ConflictError) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=409)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, error: Unavailable) -> JSONResponse:
        return JSONResponse(
            error_body(str(error)), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _redis(_: Request, error: Exception) -> JSONResponse:
        log.warning("Redis or the broker failed: %s", error)
        return JSONResponse(error_body("the store or the broker is unavailable: try again"), status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip

    @app.exception_handler(ConfigError)
    async def _config(_: Request, error: ConfigError) -> JSONResponse:
        log.error("configuration: %s", error)
        return JSONResponse(error_body(str(error)), status_code=500)

    @app.exception_handler(ApiError)
    async def _api(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(error.detail)), status_code=error.status_code,
                            headers=getattr(error, "headers", None))  # fmt: skip

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("%s %s failed (incident %s)", request.method, request.url.path, incident, exc_info=error)
        return JSONResponse({"error": "internal error", "id": incident}, status_code=500)
