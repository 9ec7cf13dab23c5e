"""POST /v1/realms/{realm}/keycloak-events: Keycloak's own event JSON, as event-listener webhook extensions
post it (scope producer or admin).

The body is mapped to the service's IAM events (worker/jobs/keycloak.py) and published like those of
POST /v1/realms/{realm}/events (tasks/api.py `submit_events`): every event is checked before any is
queued, and a bad one answers 422 naming its field in Keycloak's words (`[1].type` in an array). An event
that carries only a user id is completed by the worker, which looks the user up in the IAM.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, Field

from config.errors import InvalidInput
from tasks import api
from worker.http.auth import producer, realm_for
from worker.http.tokens import ApiToken
from worker.jobs.keycloak import MAX_EVENTS, from_keycloak, keycloak_error

router = APIRouter(prefix="/v1", tags=["keycloak"])

EXAMPLE = {
    "id": "4f0c2d1e-9b7a-4c55-8e0f-2a1b3c4d5e6f",
    "time": 1764000000000,
    "type": "LOGIN_ERROR",
    "realmId": "8d1e5c7a-0b2f-4e61-9a3d-7c6b5a4f3e2d",
    "clientId": "account-console",
    "userId": "b2f6a8c4-3d1e-4f5a-9b8c-7d6e5f4a3b2c",
    "ipAddress": "203.0.113.7",
    "error": "invalid_user_credentials",
    "details": {"auth_method": "openid-connect", "username": "alice"},
}


class EventJob(BaseModel):
    job_id: str | None = Field(description="the notice's job (GET /v1/jobs/{job_id}); null when ignored")
    type: str = Field(description="the event type, as mapped (access.LOGIN_ERROR -> LOGIN_ERROR)")
    ignored: str | None = Field(default=None, description="why no notice goes out for this event")


class KeycloakEventsAccepted(BaseModel):
    jobs: list[EventJob] = Field(description="one per event, in the order they came")


@router.post("/realms/{realm}/keycloak-events", status_code=202, response_model=KeycloakEventsAccepted,
             openapi_extra={"requestBody": {"required": True}},
             summary="Keycloak events as a webhook sends them: one EventRepresentation or an array "
                     f"(at most {MAX_EVENTS})")  # fmt: skip
def keycloak_events(
    realm: str,
    # Not required here, so that no body is the mapping's own 422; required in the schema.
    body: Any = Body(  # noqa: B008 (FastAPI's way)
        default=None,
        description='Keycloak\'s EventRepresentation, an array of them, or {"events": [...]}',
        examples=[EXAMPLE, [EXAMPLE]],
    ),
    token: ApiToken = Depends(producer),  # noqa: B008
) -> KeycloakEventsAccepted:
    realm = realm_for(token, realm)
    mapped = from_keycloak(body)
    try:
        published = api.submit_events(realm, mapped.events)
    except InvalidInput as error:
        if error.problems and error.problems[0][0] == "realm":
            raise
        raise keycloak_error(error, mapped.many) from None
    return KeycloakEventsAccepted(jobs=[
        EventJob(job_id=one.job_id, type=event["type"], ignored=one.ignored)
        for one, event in zip(published, mapped.events, strict=True)
    ])  # fmt: skip
