"""A realm's saved versions, newest first (nothing decrypted), and rollback: an earlier version saved again
as the next one (store.rollback, as `mailworker settings rollback`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from config.errors import InvalidInput
from worker.http.console.access import Posted, Visitor, posted, visitor
from worker.http.console.email_tab import tab_url
from worker.http.console.views import page
from worker.http.context import context_of

router = APIRouter()


@router.get("/realms/{realm}/history")
def history_page(request: Request, realm: str, who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    realm = who.realm(realm)
    store = context_of(request).runtime.store
    return page("history.html", who, realm=realm, versions=store.public_history(realm),
                current=store.version(realm), tab="history")  # fmt: skip


@router.post("/realms/{realm}/rollback")
def rollback(request: Request, realm: str, post: Posted = Depends(posted)) -> Response:  # noqa: B008
    realm = post.visitor.realm(realm)
    try:
        version = int(post.form.get("version", ""))
    except ValueError:
        raise InvalidInput.one("version", "must be a whole number") from None
    record = context_of(request).runtime.store.rollback(realm, version, by=post.visitor.who)
    return RedirectResponse(tab_url(realm, f"saved={record.version}"), status_code=303)
