"""The realms list: every realm the token sees, its saved version and whether a draft is pending."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from worker.http.console.access import PREFIX, Visitor, visitor
from worker.http.console.views import page
from worker.http.context import context_of

router = APIRouter()


@dataclass(frozen=True)
class RealmRow:
    name: str
    version: int
    sender: str  # From as it appears in mail: "Display <address>" (text: escaped when shown)
    host: str
    draft: bool


@router.get("/")
def realms_page(request: Request, who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    store = context_of(request).runtime.store
    # A realm-limited token sees its realms, saved or not yet (it may be the one to save them first).
    names = list(who.token.realms) if who.token.realms else store.realms()
    rows = []
    for name in names:
        fields = store.saved_fields(name) or {}
        display = fields.get("from_display_name")
        sender = f"{display} <{fields.get('from', '')}>" if display else str(fields.get("from", ""))
        rows.append(RealmRow(name, store.version(name), sender, str(fields.get("host", "")),
                             store.draft(name, lenient=True) is not None))  # fmt: skip
    return page("realms.html", who, rows=rows, limited=bool(who.token.realms))


@router.get("/open")
def open_realm(name: str = "", who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    """The "open or add a realm" box: to its Email tab (a realm name is checked there)."""
    return RedirectResponse(f"{PREFIX}/realms/{quote(name.strip(), safe='')}/email", status_code=303)
