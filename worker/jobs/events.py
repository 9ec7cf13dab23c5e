"""IAM events (as an IAM server emits them) mapped to notice e-mails. Pure: parse, decide, build the job.

An event that names its user only by id (`userId`, no e-mail address: Keycloak's LOGIN_ERROR) is valid:
the worker looks the user up in the IAM (`needs_lookup`, `with_user`; worker/delivery/iam_users.py).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from config.errors import InvalidInput
from templates.catalogue import event_template
from worker.jobs.model import MAX_JSON_DEPTH, EmailJob, job_id_for, new_job

EVENT_TYPE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}\Z")


class EventUser(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    email: str | None = None
    username: str | None = None
    first_name: str | None = Field(default=None, validation_alias=AliasChoices("first_name", "firstName"))
    last_name: str | None = Field(default=None, validation_alias=AliasChoices("last_name", "lastName"))
    locale: str | None = None


class IamEvent(BaseModel):
    """Snake_case or Keycloak's camelCase names are both accepted."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = Field(default=None, max_length=200)
    type: str
    time: int | float | str | None = None
    realm_name: str | None = Field(default=None, validation_alias=AliasChoices("realm_name", "realmName"))
    ip_address: str | None = Field(default=None, validation_alias=AliasChoices("ip_address", "ipAddress"))
    client_id: str | None = Field(default=None, validation_alias=AliasChoices("client_id", "clientId"))
    user_id: str | None = Field(
        default=None, min_length=1, max_length=200, validation_alias=AliasChoices("user_id", "userId")
    )
    details: dict[str, Any] = Field(default_factory=dict)
    user: EventUser = Field(default_factory=EventUser)
    error: str | None = None


def parse_event(data: Any) -> IamEvent:
    if not isinstance(data, dict):
        raise InvalidInput.one("event", "must be a JSON object")
    try:
        event = IamEvent.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        field = ".".join(str(p) for p in item["loc"]) or "event"
        rule = "is required" if item["type"] == "missing" else item["msg"]
        raise InvalidInput.one(f"event.{field}", rule) from None
    if not EVENT_TYPE.match(event.type):
        raise InvalidInput.one("event.type", "must be an upper-case event type like LOGIN_ERROR")
    if event.user_id is not None and (
        not event.user_id.isprintable() or event.user_id.strip() != event.user_id
    ):
        # It goes into the admin API's URL path and into dead letters and log lines.
        raise InvalidInput.one("event.user_id", "must be printable, without spaces around it")
    return event


def _email(event: IamEvent) -> str | None:
    email = event.user.email or event.details.get("email")
    return email if isinstance(email, str) and email else None


def recipient_of(event: IamEvent) -> str:
    email = _email(event)
    if email is None:
        raise InvalidInput.one(
            "event.user.email", "is required (or userId, to look the address up in the IAM): the notice "
            "goes to the user's address"
        )  # fmt: skip
    return email


def needs_lookup(event: IamEvent) -> bool:
    """The event names its user only by id: the worker looks the address up before building the job."""
    return _email(event) is None and event.user_id is not None


def with_user(event: IamEvent, user: EventUser) -> IamEvent:
    """The event completed with the looked-up user; what the event says of its user itself wins."""
    merged = {**user.model_dump(exclude_none=True), **event.user.model_dump(exclude_none=True)}
    return event.model_copy(update={"user": EventUser(**merged)})


def event_key(event: IamEvent, idempotency_key: str | None) -> str | None:
    """What names the event's job: the producer's key, else the event's own id (None: a new job)."""
    return idempotency_key or (f"event:{event.id}" if event.id else None)


def event_job_id(realm: str, event: IamEvent, idempotency_key: str | None = None) -> str:
    """The job id of an event whose job cannot be built yet (its address is looked up in the worker)."""
    return job_id_for(realm, event_key(event, idempotency_key))


def event_context(realm: str, event: IamEvent) -> dict[str, Any]:
    user = event.user
    username = user.username or event.details.get("username") or recipient_of(event)
    return {
        "realm_name": event.realm_name or realm,
        "user": {
            "username": username,
            "first_name": user.first_name or "",
            "last_name": user.last_name or "",
            "email": recipient_of(event),
        },
        "event": {
            "type": event.type,
            "time": event.time,
            "ip_address": event.ip_address or "",
            "client_id": event.client_id or "",
            "details": event.details,
            "error": event.error or "",
        },
    }


def event_job(
    realm: str,
    event: IamEvent,
    notify_events: tuple[str, ...],
    *,
    allow_utf8: bool = False,
    idempotency_key: str | None = None,
) -> EmailJob | None:
    """The notice job for this event, or None when the realm does not notify this event type.

    The job id follows `idempotency_key`, else the event's own id: the same event published twice is one job.
    """
    if event.type not in notify_events:
        return None
    return new_job(
        realm,
        event_template(event.type),
        recipient_of(event),
        locale=event.user.locale,
        context=event_context(realm, event),
        idempotency_key=event_key(event, idempotency_key),
        allow_utf8=allow_utf8,
        # The event's `details` sit one level deeper in the notice's context (context.event.details)
        # than in the event, whose depth publish_event checked: a valid event must give a valid context.
        context_depth=MAX_JSON_DEPTH + 1,
    )


def ignored_because(
    realm: str, event_type: str, notify_events: tuple[str, ...], has_template: bool
) -> str | None:
    """Why an event sends nothing, in words for its producer (HTTP answers it: 200 `ignored`), or None.

    A realm that notifies a type it has no template for says so too: the producer's event was fine, the
    realm's configuration is what to look at.
    """
    if event_type not in notify_events:
        return f"event type {event_type} does not notify in realm {realm} (its notify_events setting)"
    if not has_template:
        return f"event type {event_type} notifies in realm {realm}, but there is no template {event_template(event_type)}"
    return None
