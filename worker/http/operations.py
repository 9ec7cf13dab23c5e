"""Admin endpoints for what runs (scope admin): the realms, dead letters, stats.

    GET    /v1/realms                            the realms this token may see: version, draft pending
    GET    /v1/dead-letters?realm=&reason=       dead letters, newest first, a page at a time
    GET    /v1/dead-letters/{id}                 one, with its reason and last error
    POST   /v1/dead-letters/{id}/requeue         send it again (to the queue it came from)
    DELETE /v1/dead-letters/{id}                 forget it
    GET    /v1/stats?realm=&hours=               queue depths, dead letters, each realm's mail per hour

A token limited to realms sees only theirs: another realm's dead letter is "not found", its counts absent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from config.errors import InvalidInput, NotFound
from tasks.views import letter_json, page, realm_rows
from worker.http.auth import admin, realm_for
from worker.http.context import context_of
from worker.http.tokens import ApiToken
from worker.jobs.deadletters import REASONS, DeadLetter

router = APIRouter(prefix="/v1", tags=["admin: operations"])

PAGE_FIELDS = ("after", "limit")


@router.get("/realms", summary="The realms this token may see, with their saved version and draft")
def realms(
    request: Request,
    token: ApiToken = Depends(admin),  # noqa: B008
    limit: int = Query(default=100, ge=1, le=1000),
    after: str | None = Query(
        default=None, max_length=200, description="the last realm of the previous page"
    ),
) -> dict[str, Any]:
    saved = context_of(request).runtime.store.realms()
    # A limited token sees its realms, saved or not yet (an admin sets a new realm up through it).
    names = sorted(token.realms) if token.realms else saved
    shown, next_after = page(names, key=lambda name: name, after=after, limit=limit, fields=PAGE_FIELDS)
    return {"realms": realm_rows(shown), "next_after": next_after}


@router.get("/dead-letters", summary="Dead letters, newest first (without their job's personal data)")
def dead_letters(
    request: Request,
    token: ApiToken = Depends(admin),  # noqa: B008
    realm: str | None = Query(default=None),
    reason: str | None = Query(default=None, description="one of the dead-letter reasons"),
    limit: int = Query(default=50, ge=1, le=1000),
    after: str | None = Query(
        default=None, max_length=200, description="the last job id of the previous page"
    ),
) -> dict[str, Any]:
    if realm is not None:
        realm_for(token, realm)
    if reason is not None and reason not in REASONS:
        raise InvalidInput.one("reason", f"must be one of {', '.join(REASONS)}")
    found = [letter for letter in context_of(request).runtime.dead_letters.list(realm=realm, reason=reason,
                                                                              limit=10**9)
             if token.sees(letter.realm)]  # fmt: skip
    letters, next_after = page(found, key=lambda lt: lt.job_id, after=after, limit=limit, fields=PAGE_FIELDS)
    return {"dead_letters": [letter_json(letter) for letter in letters], "next_after": next_after}


def _letter(request: Request, token: ApiToken, job_id: str) -> DeadLetter:
    """The dead letter, if the token sees its realm: another realm's is as unknown as a missing one."""
    if len(job_id) > 200:
        raise NotFound("no such dead letter")
    letter = context_of(request).runtime.dead_letters.get(job_id)
    if not token.sees(letter.realm):
        raise NotFound(f"no dead letter {job_id!r}")
    return letter


@router.get("/dead-letters/{job_id}", summary="One dead letter with its reason and last error")
def dead_letter(job_id: str, request: Request, token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008
    return letter_json(_letter(request, token, job_id))


@router.post("/dead-letters/{job_id}/requeue", status_code=202, summary="Send a dead letter again")
def requeue(job_id: str, request: Request, token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008
    from tasks.api import requeue_dead_letter  # the Celery app: only for the routes that need it

    _letter(request, token, job_id)
    return {"job_id": requeue_dead_letter(job_id)}


@router.delete("/dead-letters/{job_id}", status_code=204, summary="Forget a dead letter")
def forget(job_id: str, request: Request, token: ApiToken = Depends(admin)) -> Response:  # noqa: B008
    _letter(request, token, job_id)
    context_of(request).runtime.dead_letters.remove(job_id)
    return Response(status_code=204)


@router.get("/stats", summary="Queue depths, dead letters, and each realm's mail per clock hour")
def stats(
    request: Request,
    token: ApiToken = Depends(admin),  # noqa: B008
    realm: str | None = Query(default=None),
    hours: int = Query(default=24, ge=1, le=48, description="how many clock hours per realm"),
) -> dict[str, Any]:
    from tasks.stats import REALM_COLUMNS, collect_stats, realm_hours

    context = context_of(request)
    if realm is not None:
        names = [realm_for(token, realm)]
    else:
        names = [name for name in context.runtime.stats.realms() if token.sees(name)]
    data = collect_stats(context.settings)
    last_hour = data.pop("last_hour")
    if token.realms:  # the whole store's dead-letter count would tell of other realms
        data["dead_letters"] = sum(
            1 for letter in context.runtime.dead_letters.list(limit=10**9) if token.sees(letter.realm)
        )
    data["realms"] = {name: {"last_hour": last_hour.get(name) or dict.fromkeys(REALM_COLUMNS, 0),
                             "hours": realm_hours(name, hours)}
                      for name in names}  # fmt: skip
    return data
