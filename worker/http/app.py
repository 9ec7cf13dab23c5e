"""The HTTP app (FastAPI): the versioned JSON API under /v1, the web console under /console, /healthz.

It holds no state of its own: tokens, sessions, settings, jobs and results are in Redis, so any number
of `mailworker serve` processes can run behind a load balancer. Routes are thin: they check who calls
(worker/http/auth.py) and hand the request to the same functions the Python API and the CLI use.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from config.settings import ServiceSettings
from worker.http import errors
from worker.http.context import make_context
from worker.http.guards import GuardMiddleware
from worker.runtime import Runtime, runtime

API_VERSION = "1"


def create_app(settings: ServiceSettings | None = None, rt: Runtime | None = None) -> FastAPI:
    rt = rt or runtime()
    settings = settings or rt.settings
    app = FastAPI(
        title="iam-mail-worker",
        version=API_VERSION,
        summary="The e-mail of an IAM server: send mail, manage each realm's SMTP server (the Email tab).",
        docs_url=None,  # Swagger UI would load its scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.context = make_context(settings, rt)
    errors.install(app)

    from worker.http import admin, console, keycloak, metrics, operations, producer, suppression, webhooks

    app.include_router(producer.router)
    app.include_router(keycloak.router)
    app.include_router(admin.router)
    app.include_router(operations.router)
    app.include_router(webhooks.router)
    app.include_router(suppression.router)
    app.include_router(metrics.router)
    console.mount(app)

    @app.get("/healthz", tags=["health"], summary="Whether the store and the broker answer (no token)")
    def healthz() -> JSONResponse:
        checks = health(rt)
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse(checks, status_code=200 if ok else 503)

    origins = [o.strip() for o in settings.http_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )  # fmt: skip
    app.add_middleware(
        GuardMiddleware, max_body=settings.http_max_body, max_bulk_body=settings.http_max_bulk_body
    )
    return app


def health(rt: Runtime) -> dict[str, Any]:
    """{"redis": "ok" | why, "broker": "ok" | why}: the store answers a PING, the broker accepts a connection."""
    from tasks.stats import broker_connection

    checks: dict[str, Any] = {}
    try:
        rt.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:  # any failure is the answer, not a 500
        checks["redis"] = f"{type(error).__name__}"
    try:
        with broker_connection(rt.settings, timeout=2.0) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2.0)
        checks["broker"] = "ok"
    except Exception as error:
        checks["broker"] = f"{type(error).__name__}"
    return checks
