"""Bulk jobs: the newest ones, a page per job with a live progress bar (static/console.js polls
/console/data/bulk/{id}, session-authenticated JSON) and a cancel button (tasks.api.cancel_bulk).
A realm-limited token sees only its realms' jobs; another realm's job is as unknown as a missing one."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from config.errors import NotFound
from worker.bulk.progress import FINISHED_STATES, QUEUED, RUNNING
from worker.http.console.access import PREFIX, Posted, Visitor, posted, visitor
from worker.http.console.views import page
from worker.http.context import context_of

router = APIRouter()

LISTED = 50  # newest jobs on the list page
MAX_ID = 200


def visible_progress(request: Request, who: Visitor, job_id: str) -> dict[str, Any]:
    from tasks.api import bulk_progress

    if len(job_id) > MAX_ID:
        raise NotFound("no such bulk job")
    progress = bulk_progress(job_id)
    if not who.token.sees(str(progress.get("realm"))):
        raise NotFound(f"no bulk job {job_id!r}")
    return progress


def with_view(progress: dict[str, Any]) -> dict[str, Any]:
    """The progress with what the page shows: the percentage, whether the job is over (every chunk
    settled, not just its state set: a cancelled job still counts what it drops) and may be cancelled."""
    over = progress["state"] in FINISHED_STATES and progress["chunks_done"] >= progress["chunks"]
    return {**progress, "percent": percent(progress), "finished": over,
            "cancellable": progress["state"] in (QUEUED, RUNNING)}  # fmt: skip


def percent(progress: dict[str, Any]) -> float:
    """How much of the job is settled (sent, failed, cancelled or suppressed), 0 to 100."""
    total = int(progress.get("total") or 0)
    settled = sum(int(progress.get(name) or 0) for name in ("sent", "failed", "cancelled", "suppressed"))
    return 100.0 if total == 0 else round(min(100.0, 100.0 * settled / total), 1)


@router.get("/bulk")
def bulk_list(request: Request, who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    from tasks.api import bulk_progress

    jobs = []
    for job_id in context_of(request).runtime.bulk_jobs.newest():
        try:
            progress = bulk_progress(job_id)
        except NotFound:  # expired between the index and now
            continue
        if who.token.sees(str(progress.get("realm"))):
            jobs.append(with_view(progress))
        if len(jobs) >= LISTED:
            break
    return page("bulk_list.html", who, jobs=jobs)


@router.get("/bulk/{job_id}")
def bulk_page(request: Request, job_id: str, who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    return page("bulk.html", who, job=with_view(visible_progress(request, who, job_id)))


@router.get("/data/bulk/{job_id}")
def bulk_data(request: Request, job_id: str, who: Visitor = Depends(visitor)) -> JSONResponse:  # noqa: B008
    return JSONResponse(with_view(visible_progress(request, who, job_id)))


@router.post("/bulk/{job_id}/cancel")
def cancel(request: Request, job_id: str, post: Posted = Depends(posted)) -> Response:  # noqa: B008
    from tasks.api import cancel_bulk

    visible_progress(request, post.visitor, job_id)
    cancel_bulk(job_id)
    return RedirectResponse(f"{PREFIX}/bulk/{quote(job_id, safe='')}", status_code=303)
