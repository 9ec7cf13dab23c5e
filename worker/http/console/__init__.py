"""The web console under /console. (Being written.)"""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Add the console's routes and static files to `app`."""
