"""Keycloak's own event JSON, as event-listener webhook extensions post it, mapped to the service's IAM
event (worker/jobs/events.py). Pure: no I/O, errors name the field in Keycloak's words.

    events = from_keycloak(body)   # one EventRepresentation, an array of them, or a wrapper -> Mapped

Keycloak's EventRepresentation:

    {"id": "4f0c...", "time": 1764000000000, "type": "LOGIN_ERROR", "realmId": "8d1e...", "clientId":
     "account-console", "userId": "b2f6...", "sessionId": null, "ipAddress": "203.0.113.7",
     "error": "invalid_user_credentials", "details": {"username": "alice", "auth_method": "openid-connect"}}

`details.email`, `details.username`, `details.first_name`, `details.last_name` fill the event's user; an
event without an address (LOGIN_ERROR carries only `userId`) is completed by the worker's look-up in the
IAM. `realmId` is Keycloak's internal id, not a name to show: the notice says the realm's name
(`realmName` when the extension sends it).

Wrappers accepted as well, because extensions differ: `{"events": [...]}`, `{"event": {...}}`, and the
shape of the p2-inc keycloak-events webhook (`"type": "access.LOGIN_ERROR"`, the user and client in
`authDetails`). An admin event (`operationType`) becomes `ADMIN_<operation>`, which no realm notifies: it
is answered as ignored, not refused, so a webhook that sends everything is not retried forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput
from worker.jobs.events import EVENT_TYPE

MAX_EVENTS = 100
# Event type prefixes of the p2-inc webhook ("access.LOGIN_ERROR").
_TYPE_PREFIX = re.compile(r"^(access|admin)\.")
# Keycloak's name of each field an IAM event has, for errors found after the mapping (tasks/api.py).
KEYCLOAK_FIELDS = {
    "event": "",
    "event.type": "type",
    "event.id": "id",
    "event.time": "time",
    "event.details": "details",
    "event.user_id": "userId",
    "event.client_id": "clientId",
    "event.ip_address": "ipAddress",
    "event.error": "error",
    "event.realm_name": "realmName",
    "event.user.email": "details.email",
    "event.user.username": "details.username",
    "to": "details.email",
    "locale": "details.locale",
}
_TEXT_FIELDS = (("id", "id"), ("clientId", "client_id"), ("ipAddress", "ip_address"), ("error", "error"),
                ("realmName", "realm_name"))  # fmt: skip
_USER_DETAILS = (("email", "email"), ("username", "username"), ("first_name", "first_name"),
                 ("last_name", "last_name"), ("locale", "locale"))  # fmt: skip


@dataclass(frozen=True)
class Mapped:
    events: list[dict[str, Any]]  # IAM events, in the order they came
    many: bool  # the body was an array (errors name `[i].field`)


def unwrap(body: Any) -> tuple[list[Any], bool]:
    """The representations in a body, and whether it held several (an array)."""
    if isinstance(body, dict) and isinstance(body.get("events"), list) and "type" not in body:
        body = body["events"]
    elif isinstance(body, dict) and isinstance(body.get("event"), dict) and "type" not in body:
        body = body["event"]
    if isinstance(body, list):
        return body, True
    return [body], False


def _text(rep: dict[str, Any], name: str, limit: int = 500) -> str | None:
    value = rep.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInput.one(name, f"must be a string of at most {limit} characters")
    return value


def event_type(rep: dict[str, Any]) -> str:
    if "operationType" in rep and "type" not in rep:  # an admin event: nobody is notified of those
        operation = rep.get("operationType")
        return f"ADMIN_{operation if isinstance(operation, str) and operation.isalpha() else 'EVENT'}".upper()
    value = rep.get("type")
    if value is None:
        raise InvalidInput.one("type", "is required (Keycloak's event type, e.g. LOGIN_ERROR)")
    if not isinstance(value, str) or not EVENT_TYPE.match(_TYPE_PREFIX.sub("", value)):
        raise InvalidInput.one("type", "must be an upper-case Keycloak event type like LOGIN_ERROR")
    return _TYPE_PREFIX.sub("", value)


def to_iam_event(rep: Any) -> dict[str, Any]:
    """One EventRepresentation as the service's IAM event; InvalidInput names the field as Keycloak does."""
    if not isinstance(rep, dict):
        raise InvalidInput.one("", "must be a JSON object (Keycloak's EventRepresentation)")
    auth = rep.get("authDetails")
    if auth is not None and not isinstance(auth, dict):
        raise InvalidInput.one("authDetails", "must be a JSON object")
    if auth:  # the p2-inc webhook keeps the user and the client there
        rep = {**{k: auth[k] for k in ("userId", "clientId", "ipAddress") if k in auth}, **rep}
    details = rep.get("details")
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise InvalidInput.one("details", "must be a JSON object of strings")
    if auth and isinstance(auth.get("username"), str):
        details = {"username": auth["username"], **details}
    event: dict[str, Any] = {"type": event_type(rep)}
    for name, ours in _TEXT_FIELDS:
        value = _text(rep, name)
        if value is not None:
            event[ours] = value
    user_id = _text(rep, "userId", 200)
    if user_id:
        event["user_id"] = user_id
    when = rep.get("time")
    if when is not None:
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise InvalidInput.one("time", "must be a number (milliseconds since 1970, as Keycloak sends it)")
        event["time"] = when
    user: dict[str, Any] = {}
    for name, ours in _USER_DETAILS:
        value = details.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidInput.one(f"details.{name}", "must be a string")
        user[ours] = value
    event["details"] = details
    if user:
        event["user"] = user
    return event


def from_keycloak(body: Any) -> Mapped:
    """Every event of a body, mapped; the first bad one is refused naming `[i].field` (arrays) or `field`."""
    reps, many = unwrap(body)
    if many and not reps:
        raise InvalidInput.one("", "is an empty array: send at least one event")
    if len(reps) > MAX_EVENTS:
        raise InvalidInput.one("", f"holds {len(reps)} events; at most {MAX_EVENTS} per request")
    events = []
    for index, rep in enumerate(reps):
        try:
            events.append(to_iam_event(rep))
        except InvalidInput as error:
            raise keycloak_error(error, many, index) from None
    return Mapped(events, many)


def keycloak_error(error: InvalidInput, many: bool, index: int | None = None) -> InvalidInput:
    """An error about mapped events (`[2].event.type`, `to`) in Keycloak's words (`[2].type`,
    `details.email`); `index` for an error about one event that does not carry its index yet."""
    problems = []
    for field, rule in error.problems:
        prefix, rest = "", field
        match = re.match(r"^\[(\d+)\]\.?(.*)$", field)
        if match:
            prefix, rest = f"[{match.group(1)}]", match.group(2)
        elif many:
            prefix = f"[{index or 0}]"
        name = KEYCLOAK_FIELDS.get(rest, rest.removeprefix("event."))
        problems.append((f"{prefix}.{name}" if prefix and name else prefix or name, rule))
    return InvalidInput(problems)
