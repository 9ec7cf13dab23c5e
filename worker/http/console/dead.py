"""Dead letters: the list (by realm and reason), requeue (tasks.api.requeue_dead_letter, as `mailworker
dead requeue`) and delete. A realm-limited token sees, requeues and deletes only its realms' letters."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from config.errors import NotFound
from worker.http.console.access import PREFIX, Posted, Visitor, posted, visitor
from worker.http.console.views import page
from worker.http.context import context_of
from worker.jobs.deadletters import REASONS, DeadLetter

router = APIRouter()

SHOWN = 200  # letters on one page, newest first


@router.get("/dead-letters")
def dead_letters(request: Request, realm: str = "", reason: str = "", done: str = "",
                 who: Visitor = Depends(visitor)) -> Response:  # noqa: B008  # fmt: skip
    if realm:
        who.realm(realm)
    store = context_of(request).runtime.dead_letters
    found = store.list(realm=realm or None, reason=reason if reason in REASONS else None, limit=10**9)
    letters = [letter for letter in found if who.token.sees(letter.realm)][:SHOWN]
    return page("dead.html", who, letters=letters, realm=realm, reason=reason, reasons=REASONS, done=done,
                more=len(letters) == SHOWN)  # fmt: skip


def visible_letter(request: Request, who: Visitor, job_id: str) -> DeadLetter:
    letter = context_of(request).runtime.dead_letters.get(job_id)
    if not who.token.sees(letter.realm):
        raise NotFound(f"no dead letter {job_id!r}")  # as one that does not exist
    return letter


def back(form: dict[str, str], done: str) -> RedirectResponse:
    query = {k: v for k, v in (("realm", form.get("realm", "")), ("reason", form.get("reason", ""))) if v}
    return RedirectResponse(f"{PREFIX}/dead-letters?{urlencode({**query, 'done': done})}", status_code=303)


@router.post("/dead-letters/{job_id}/requeue")
def requeue(request: Request, job_id: str, post: Posted = Depends(posted)) -> Response:  # noqa: B008
    from tasks.api import requeue_dead_letter

    requeue_dead_letter(visible_letter(request, post.visitor, job_id).job_id)
    return back(post.form, f"requeued {job_id}")


@router.post("/dead-letters/{job_id}/delete")
def delete(request: Request, job_id: str, post: Posted = Depends(posted)) -> Response:  # noqa: B008
    context_of(request).runtime.dead_letters.remove(visible_letter(request, post.visitor, job_id).job_id)
    return back(post.form, f"deleted {job_id}")
