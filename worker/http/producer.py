"""Producer endpoints (scope producer or admin): send mail, publish IAM events, bulk notices, job status.

Each route is the HTTP form of a tasks.api call, with the same validation and the same errors: an
`InvalidInput` becomes 422 naming the field and the rule (worker/http/errors.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from config.errors import NotFound
from tasks import api
from tasks.status import job_status
from tasks.views import status_json
from worker.http import bulk
from worker.http.auth import producer, realm_for
from worker.http.tokens import ApiToken

router = APIRouter(prefix="/v1", tags=["producer"])


class EmailRequest(BaseModel):
    """The arguments of `tasks.api.send_email`; their rules are checked there (422 names the field)."""

    model_config = ConfigDict(extra="forbid")

    template: Any = Field(description="template name", examples=["password-reset"])
    to: Any = Field(description="the recipient's address", examples=["alice@example.com"])
    locale: Any = Field(default=None, description="language tag, e.g. de or pt-BR (default: en)")
    context: Any = Field(default=None, description="the template's variables (a JSON object)")
    to_name: Any = Field(default=None, description="the recipient's display name")
    expires_in: Any = Field(default=None, description="seconds after which the job is not sent any more")


class JobAccepted(BaseModel):
    job_id: str | None


class EventAnswer(BaseModel):
    job_id: str | None = Field(description="the notice's job; null when the event sends nothing")
    ignored: str | None = Field(default=None, description="why the event sends nothing (200 only)")


EVENT_EXAMPLE = {
    "id": "5b8f-1", "type": "UPDATE_PASSWORD", "time": 1764000000000, "ipAddress": "203.0.113.7",
    "clientId": "account-console", "user": {"email": "alice@example.com", "username": "alice"},
}  # fmt: skip
EVENT_DESCRIPTION = "the event as the IAM server emits it (Keycloak's camelCase or snake_case names)"


@router.post("/realms/{realm}/emails", status_code=202, response_model=JobAccepted,
             summary="Send one e-mail (the job is queued; GET /v1/jobs/{job_id} follows it)")  # fmt: skip
def send_email(
    realm: str,
    body: EmailRequest,
    token: ApiToken = Depends(producer),  # noqa: B008
    idempotency_key: str | None = Header(default=None, description="sending twice sends once"),
) -> JobAccepted:
    realm = realm_for(token, realm)
    job_id = api.send_email(
        realm, body.template, body.to, locale=body.locale, context=body.context, to_name=body.to_name,
        expires_in=body.expires_in, idempotency_key=idempotency_key,
    )  # fmt: skip
    return JobAccepted(job_id=job_id)


@router.post("/realms/{realm}/events", status_code=202, response_model=EventAnswer, response_model_exclude_none=True,
             responses={200: {"model": EventAnswer, "description": "the realm does not notify this event"}},
             openapi_extra={"requestBody": {"required": True}},
             summary="Publish an IAM event: its notice is queued (202), or the realm does not notify it (200)")  # fmt: skip
def publish_event(
    realm: str,
    # Not required here, so that no body is publish_event's own 422 naming `event`; required in the schema.
    event: Any = Body(default=None, description=EVENT_DESCRIPTION, examples=[EVENT_EXAMPLE]),  # noqa: B008
    token: ApiToken = Depends(producer),  # noqa: B008
    idempotency_key: str | None = Header(
        default=None, description="else the event's id: publishing twice sends once"
    ),
) -> Any:
    realm = realm_for(token, realm)
    outcome = api.submit_event(realm, event, idempotency_key=idempotency_key)
    if outcome.job_id is None:
        return JSONResponse({"job_id": None, "ignored": outcome.ignored}, status_code=200)
    return EventAnswer(job_id=outcome.job_id)


@router.get("/jobs/{job_id}", summary="A job's status: sent, dead-lettered, queued, retry, ...")
def get_job(job_id: str, token: ApiToken = Depends(producer)) -> dict[str, Any]:  # noqa: B008
    if len(job_id) > 200:
        raise NotFound(f"job {job_id[:40]}... not found")
    info = job_status(job_id)
    realm = info.get("realm")
    if info.pop("known", True) is False or (token.realms and realm not in token.realms):
        # A token limited to realms sees only their jobs; one of another realm is as unknown.
        raise NotFound(f"job {job_id} not found")
    return status_json(info)


# The bulk endpoints are producer endpoints too, in a module of their own (the NDJSON upload is most of it).
router.include_router(bulk.router)
