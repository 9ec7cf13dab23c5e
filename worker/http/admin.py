"""Admin endpoints for a realm's SMTP server (scope admin): the Email tab as JSON, Keycloak's semantics.

    GET  /v1/realms/{realm}/smtp             the saved settings (secrets as the mask)
    GET  /v1/realms/{realm}/smtp/draft       the draft, its id and what saving it would change
    PUT  /v1/realms/{realm}/smtp/draft       edit the draft (only the fields given; null clears one)
    POST /v1/realms/{realm}/smtp/save        save the draft (with changes on top) as the next version
    POST /v1/realms/{realm}/smtp/revert      discard the draft
    POST /v1/realms/{realm}/smtp/test        Test Connection on the draft or the saved settings
    GET  /v1/realms/{realm}/smtp/history     the saved versions, newest first
    POST /v1/realms/{realm}/smtp/rollback    save an earlier version again, as a new version

Each takes `?server=secondary` to work on the realm's secondary SMTP server (failover, docs/delivery.md)
instead of its primary: the same routes, store, rules and history (config/store.py `for_server`).

Each is the HTTP form of a `mailworker settings` command over the same SettingsStore: the same rules
(422 naming the field), the same secret-asked-again rule when a change would send a stored password
elsewhere, the same conflicts (409) when someone saved meanwhile or a draft is pending unseen.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from config.errors import InvalidInput, NotFound
from config.keys import PRIMARY
from config.store import SettingsStore
from tasks.views import draft_json, history_json, saved_json
from worker.http.auth import admin, realm_for
from worker.http.context import context_of
from worker.http.tokens import ApiToken

router = APIRouter(prefix="/v1/realms/{realm}/smtp", tags=["admin: SMTP settings"])

TEST_WAIT_S = 60.0
# Which of the realm's SMTP servers a route works on (config/keys.py SERVERS).
Server = Annotated[Literal["primary", "secondary"],
                   Query(description="the realm's primary SMTP server, or its secondary (failover)")]  # fmt: skip
MAX_VERSION = 2**31  # versions count saves: anything beyond is a typo, said as a rule rather than a 404


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: dict[str, Any] = Field(default_factory=dict,
                                    description="fields to change on top of the draft (JSON names; null clears)")  # fmt: skip
    draft_id: str | None = Field(default=None, max_length=64,
                                 description="the pending draft you reviewed: needed for changes while one is pending")  # fmt: skip
    expect_version: int | None = Field(
        default=None, ge=0, description="refuse unless this is the saved version"
    )
    note: str | None = Field(default=None, description="kept with the version in the history")


class ConnectionTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Literal["draft", "saved"] = Field(default="draft",
                                              description="draft: the draft when there is one, else the saved")  # fmt: skip
    send_to: str | None = Field(default=None, description="also send a test message to this address")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION, description="the saved version to save again")
    note: str | None = None


def store_of(request: Request, server: str = PRIMARY) -> SettingsStore:
    """The store (of the realm's `server`), with the secret key checked first: a server without it says so
    in one line (500)."""
    runtime = context_of(request).runtime
    _ = runtime.box
    return runtime.store.for_server(server)


def saved_by(token: ApiToken) -> str:
    """Who saved, for the history: the token's name and id (never the token)."""
    return f"token {token.name or '-'} ({token.id})"


@router.get("", summary="The saved settings (secrets masked), and the pending draft's id if any")
def get_saved(
    realm: str,
    request: Request,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    store = store_of(request, server)
    saved = store.saved(realm, lenient=True)
    if saved is None:
        raise NotFound(f"realm {realm} has no saved SMTP settings")
    draft = store.draft(realm, lenient=True)
    return {**saved_json(saved), "draft_id": draft.draft_id if draft else None}


@router.get("/draft", summary="The draft: its id, its fields, what saving it would change")
def get_draft(
    realm: str,
    request: Request,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    store = store_of(request, server)
    draft = store.draft(realm, lenient=True)
    if draft is None:
        raise NotFound(f"realm {realm} has no draft")
    return draft_json(store, draft)


@router.put("/draft", summary="Edit the draft (started from the saved settings): only the fields given")
def put_draft(
    realm: str,
    request: Request,
    changes: dict[str, Any],
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    if not changes:
        raise InvalidInput.one("", "nothing to change: give at least one field")
    store = store_of(request, server)
    return draft_json(store, store.set_draft(realm, changes))


@router.post("/save", summary="Save the draft, with `changes` on top, as the next version")
def save(
    realm: str,
    request: Request,
    body: SaveRequest | None = None,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    body = body or SaveRequest()
    store = store_of(request, server)
    if not body.changes and store.draft(realm, lenient=True) is None and store.version(realm) > 0:
        raise InvalidInput.one("changes", f"nothing to save: {realm} has no draft and no change was given")
    saved = store.save(realm, body.changes, expected_version=body.expect_version, draft_id=body.draft_id,
                       note=body.note, by=saved_by(token))  # fmt: skip
    return saved_json(saved)


@router.post("/revert", summary="Discard the draft (the Email tab's Revert)")
def revert(
    realm: str,
    request: Request,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    # Deleting the draft decrypts nothing: no secret key needed.
    return {"reverted": context_of(request).runtime.store.for_server(server).revert(realm)}


@router.post("/test", summary="Test Connection on a worker, stage by stage; 200 with ok true or false")
def test(
    realm: str,
    body: ConnectionTestRequest | None = None,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    from tasks.connection import test_connection  # the Celery app: only for the routes that need it

    realm = realm_for(token, realm)
    body = body or ConnectionTestRequest()
    # A failed test is an answer (ok false, the stage, the hint), not an HTTP error; no worker is 503.
    return test_connection(realm, use_draft=body.target == "draft", send_to=body.send_to, timeout=TEST_WAIT_S,
                           server=server)  # fmt: skip


@router.get("/history", summary="The saved versions, newest first (secrets masked)")
def history(
    realm: str,
    request: Request,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    versions = context_of(request).runtime.store.for_server(server).public_history(realm)  # nothing decrypted
    return {"versions": [history_json(version) for version in versions]}


@router.post("/rollback", summary="Save an earlier version again, as the next version")
def rollback(
    realm: str,
    request: Request,
    body: RollbackRequest,
    server: Server = "primary",
    token: ApiToken = Depends(admin),  # noqa: B008
) -> dict[str, Any]:
    realm = realm_for(token, realm)
    saved = store_of(request, server).rollback(realm, body.version, note=body.note, by=saved_by(token))
    return saved_json(saved)
