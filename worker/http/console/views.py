"""Rendering: the console's Jinja2 templates (autoescaped: a display name is text, never markup) and the
pages for errors.

Templates get the visitor (for its CSRF token and the navigation) and `url`, the console's prefix.
"""

from __future__ import annotations

import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

from worker.http.console.access import PREFIX, Visitor

HERE = Path(__file__).parent


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: nothing a user typed becomes markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["short_when"] = short_when
    env.globals["prefix"] = PREFIX
    return env


def page(name: str, visitor: Visitor | None, status: int = 200, **values: Any) -> HTMLResponse:
    html = environment().get_template(name).render(visitor=visitor, **values)
    return HTMLResponse(html, status_code=status)


def error_page(status: int, title: str, message: str, visitor: Visitor | None = None) -> HTMLResponse:
    return page("error.html", visitor, status, title=title, message=message)


def when(timestamp: float | None) -> str:
    """A time as the admin reads it: UTC, to the second."""
    if not timestamp:
        return ""
    moment = datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def short_when(timestamp: float | None) -> str:
    """A time for a table cell: UTC, to the minute (the full time is in the cell's title)."""
    return when(timestamp)[:16]
