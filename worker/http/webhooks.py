"""Admin endpoints for a realm's delivery webhooks (scope admin; a realm-limited token sees its realms only):

    GET    /v1/realms/{realm}/webhooks            the endpoints (secrets masked)
    POST   /v1/realms/{realm}/webhooks            add one: {url, events}; the answer holds its secret, once
    DELETE /v1/realms/{realm}/webhooks/{id}       remove one
    POST   /v1/realms/{realm}/webhooks/{id}/test  send a signed `test` ping now; the receiver's answer

The HTTP form of `mailworker webhook` over the same EndpointStore: the same rules (422 naming the field).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from config.errors import NotFound
from tasks.views import iso
from worker.http.auth import admin, realm_for
from worker.http.context import context_of
from worker.http.tokens import ApiToken
from worker.outcomes.outcome import EVENTS

router = APIRouter(prefix="/v1/realms/{realm}/webhooks", tags=["admin: webhooks"])


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="https://... (http only to this machine, for tests)")
    events: list[str] = Field(max_length=len(EVENTS), description=f"some of {', '.join(EVENTS)}")


def endpoint_json(endpoint: Any) -> dict[str, Any]:
    return {**endpoint.public(), "created_at": iso(endpoint.created_at)}


def _owned(request: Request, realm: str, endpoint_id: str) -> Any:
    endpoint = context_of(request).runtime.webhooks.get(endpoint_id)
    if endpoint.realm != realm:  # another realm's endpoint is as unknown as a missing one
        raise NotFound(f"no webhook endpoint {endpoint_id!r} in realm {realm}")
    return endpoint


@router.get("", summary="The realm's webhook endpoints (secrets masked)")
def list_webhooks(realm: str, request: Request, token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008
    realm = realm_for(token, realm)
    return {"webhooks": [endpoint_json(e) for e in context_of(request).runtime.webhooks.list(realm)]}


@router.post("", status_code=201, summary="Add an endpoint; the answer shows its signing secret, once")
def add_webhook(realm: str, body: AddRequest, request: Request,
                token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008  # fmt: skip
    realm = realm_for(token, realm)
    endpoint, secret = context_of(request).runtime.webhooks.add(realm, body.url, body.events)
    return {**endpoint_json(endpoint), "secret": secret}


@router.delete("/{endpoint_id}", summary="Remove an endpoint: it gets no more events")
def remove_webhook(realm: str, endpoint_id: str, request: Request,
                   token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008  # fmt: skip
    realm = realm_for(token, realm)
    _owned(request, realm, endpoint_id)
    context_of(request).runtime.webhooks.remove(endpoint_id, realm)
    return {"removed": endpoint_id}


@router.post("/{endpoint_id}/test", summary="Send a signed `test` ping now; the receiver's answer")
def test_webhook(realm: str, endpoint_id: str, request: Request,
                 token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008  # fmt: skip
    realm = realm_for(token, realm)
    _owned(request, realm, endpoint_id)
    answer = context_of(request).runtime.webhook_delivery.test(endpoint_id)
    return {"ok": answer.ok, "http_status": answer.status, "error": answer.error}
