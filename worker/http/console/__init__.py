"""The web console under /console: sign in with an admin token, then the realms, each realm's Email tab
(Save, Test Connection, Revert), history with rollback, dead letters, bulk jobs, stats.

Server-rendered HTML (Jinja2, autoescaped), one small CSS and one small JS file served from the package:
no CDN, no build step, nothing inline, so the strict Content-Security-Policy of worker/http/guards.py
holds. It is a sub-application of its own, so its errors are pages (or a redirect to the sign-in page),
never the API's JSON, and its routes stay out of the API's OpenAPI schema. Its handlers call what the CLI
calls (the settings store, tasks.api, tasks.connection); it never calls the JSON API over HTTP.

access.py   who is signed in, CSRF checks, cookies        forms.py    the Email tab's form as pure data
views.py    templates and error pages                     chart.py    the stats chart's geometry (pure)
signin.py   sign-in and sign-out                          realms.py   the realms list
email_tab.py  the Email tab and its three buttons         history.py  saved versions, rollback
dead.py     dead letters: list, requeue, delete           bulk.py     bulk jobs: live progress, cancel
stats.py    a realm's counters and its chart              failures.py errors as pages
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from worker.http.console.access import PREFIX
from worker.http.console.views import HERE


def mount(app: FastAPI) -> None:
    """Add the console to `app` at /console (its context shared: the same stores and settings)."""
    from worker.http.console import bulk, dead, email_tab, failures, history, realms, signin, stats

    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.context = app.state.context
    for module in (signin, realms, email_tab, history, dead, bulk, stats):
        console.include_router(module.router)
    console.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    failures.install(console)

    @app.get(PREFIX, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.mount(PREFIX, console)
