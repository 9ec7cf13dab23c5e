"""A realm's Email tab and its three buttons, with the CLI's semantics (worker/cli/settings_cmd.py):

- Save: what the form holds becomes the next version (store.save with the draft id and version the page
  was shown with, so a draft or a save by someone else meanwhile is a conflict, not a silent overwrite).
- Test Connection: what the form holds becomes the realm's draft (not saved) and a worker probes it, as
  `mailworker settings set` then `mailworker settings test` do; the verdict appears beside the form.
- Revert: the draft is discarded.

`?server=secondary` (the switch above the form) shows and edits the realm's secondary SMTP server (failover,
docs/delivery.md) with the same form, buttons and rules: the store's `for_server`.

The form itself is data (forms.py); the rules are the store's, and its InvalidInput lands next to fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from config.crypto import MASK
from config.edits import diff_settings
from config.errors import ConflictError, InvalidInput, Unavailable
from config.store import SettingsStore
from worker.http.console.access import PREFIX, Posted, Visitor, posted, visitor
from worker.http.console.forms import (
    LABELS,
    SECTIONS,
    FormValues,
    changes_from_form,
    form_conflict,
    place_errors,
    posted_values,
    shown_values,
    stored_secrets,
)
from worker.http.console.views import page
from worker.http.context import context_of

router = APIRouter()

# How long the Test Connection button waits for a worker's verdict; the probe itself ends before.
TEST_WAIT_S = 30.0
Server = Literal["primary", "secondary"]  # which of the realm's SMTP servers the tab shows (config/keys.py)


@dataclass
class TabState:
    """What one rendering of the Email tab shows beyond the store's state."""

    values: FormValues | None = None  # None: the draft's, else the saved settings'
    form_ids: tuple[str, int] | None = None  # (draft id, version) the form was opened with
    errors: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    conflict: str | None = None
    failed: str | None = None  # "Not saved" / "Not tested": above the form when a field has an error
    notice: str | None = None
    test: dict[str, Any] | None = None
    test_error: str | None = None
    send_to: str = ""


def render_tab(request: Request, who: Visitor, realm: str, state: TabState, status: int = 200,
               server: Server = "primary") -> Response:  # fmt: skip
    store = context_of(request).runtime.store.for_server(server)
    saved = store.saved(realm, lenient=True)
    draft = store.draft(realm, lenient=True)
    shown = draft or saved
    settings = shown.settings if shown is not None else None
    draft_id, version = state.form_ids or (
        draft.draft_id if draft else "",
        draft.base_version if draft else saved.version if saved else 0,
    )
    warnings = [f"The stored {name} cannot be used ({why}): enter it again." for name, why in
                (shown.unusable.items() if shown is not None else ())]  # fmt: skip
    pending = diff_settings(saved.settings if saved else None, draft.settings) if draft else []
    return page(
        "email_tab.html", who, status, realm=realm, sections=SECTIONS,
        values=state.values if state.values is not None else shown_values(settings),
        stored=stored_secrets(settings), mask=MASK, labels=LABELS, saved=saved, draft=draft, pending=pending,
        draft_id=draft_id, form_version=version, state=state, warnings=warnings, tab="email", server=server,
        on_server="?server=secondary" if server == "secondary" else "",
    )  # fmt: skip


def tab_url(realm: str, query: str = "", server: Server = "primary") -> str:
    query = "&".join(part for part in (query, "server=secondary" if server == "secondary" else "") if part)
    return f"{PREFIX}/realms/{quote(realm, safe='')}/email" + (f"?{query}" if query else "")


@router.get("/realms/{realm}/email")
def email_tab(request: Request, realm: str, saved: int | None = None, reverted: int | None = None,
              server: Server = "primary", who: Visitor = Depends(visitor)) -> Response:  # noqa: B008 (FastAPI's way)  # fmt: skip
    realm = who.realm(realm)
    notice = None
    if saved is not None:
        notice = f"Saved as version {saved}."
    elif reverted is not None:
        notice = "Draft discarded." if reverted else "There was no draft to discard."
    return render_tab(request, who, realm, TabState(notice=notice), server=server)


@router.post("/realms/{realm}/email/save")
def save(request: Request, realm: str, server: Server = "primary",
         post: Posted = Depends(posted)) -> Response:  # noqa: B008  # fmt: skip
    who, form = post.visitor, post.form
    realm = who.realm(realm)
    store = context_of(request).runtime.store.for_server(server)
    draft_id, version = form_ids(form)
    state = TabState(values=posted_values(form), form_ids=(draft_id, version))
    try:
        check_unchanged(store, realm, draft_id, version)
        record = store.save(realm, changes_from_form(form), expected_version=version,
                            draft_id=draft_id or None, by=who.who)  # fmt: skip
    except InvalidInput as error:
        state.errors, state.general = place_errors(error.problems)
        state.failed = "Not saved"
        return render_tab(request, who, realm, state, 422, server)
    except ConflictError as error:
        state.conflict = f"{error} Reload the Email tab to see the current settings."
        return render_tab(request, who, realm, state, 409, server)
    return RedirectResponse(tab_url(realm, f"saved={record.version}", server), status_code=303)


@router.post("/realms/{realm}/email/test")
def test(request: Request, realm: str, server: Server = "primary",
         post: Posted = Depends(posted)) -> Response:  # noqa: B008  # fmt: skip
    from tasks.connection import test_connection  # the Celery app: imported when a test is run

    who, form = post.visitor, post.form
    realm = who.realm(realm)
    store = context_of(request).runtime.store.for_server(server)
    draft_id, version = form_ids(form)
    send_to = form.get("send_to", "").strip()
    state = TabState(values=posted_values(form), form_ids=(draft_id, version), send_to=send_to)
    try:
        check_unchanged(store, realm, draft_id, version)
        draft = store.set_draft(realm, changes_from_form(form))
    except InvalidInput as error:
        state.errors, state.general = place_errors(error.problems)
        state.failed = "Not tested"
        return render_tab(request, who, realm, state, 422, server)
    except ConflictError as error:
        state.conflict = str(error)
        return render_tab(request, who, realm, state, 409, server)
    # From here on the form is the draft: the page shows it, and Save names it.
    state = TabState(send_to=send_to)
    try:
        state.test = test_connection(realm, use_draft=True, send_to=send_to or None, timeout=TEST_WAIT_S,
                                     server=server)  # fmt: skip
    except InvalidInput as error:  # the send_to address
        state.errors, state.general = place_errors(error.problems)
    except Unavailable as error:  # no worker, or none answered in time
        state.test_error = str(error)
    state.notice = f"The form is now draft {draft.draft_id} (not saved): Save applies it, Revert discards it."
    return render_tab(request, who, realm, state, server=server)


@router.post("/realms/{realm}/email/revert")
def revert(request: Request, realm: str, server: Server = "primary",
         post: Posted = Depends(posted)) -> Response:  # noqa: B008  # fmt: skip
    realm = post.visitor.realm(realm)
    discarded = context_of(request).runtime.store.for_server(server).revert(realm)
    return RedirectResponse(tab_url(realm, f"reverted={int(discarded)}", server), status_code=303)


def form_ids(form: dict[str, str]) -> tuple[str, int]:
    """(draft id, version) the form was opened with, from its hidden fields."""
    try:
        version = int(form.get("version", "0"))
    except ValueError:
        raise InvalidInput.one("version", "must be a whole number (reload the page)") from None
    return form.get("draft_id", "").strip(), version


def check_unchanged(store: SettingsStore, realm: str, draft_id: str, version: int) -> None:
    """ConflictError when the realm moved on since the page was shown (forms.form_conflict). The store
    checks again when it writes: this check words it for the page and covers Test Connection too."""
    pending = store.draft(realm, lenient=True)
    reason = form_conflict(pending.draft_id if pending else "", draft_id, store.version(realm), version)
    if reason:
        raise ConflictError(reason)
