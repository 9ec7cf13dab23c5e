"""The e-mail job: what a producer enqueues and a worker delivers. Validation is pure and runs at enqueue.

A job never carries a secret: the worker reads the realm's settings (and password) from the store.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from config.errors import InvalidInput
from config.names import check_locale, check_realm, check_template_name
from config.smtp import check_address, has_line_break
from templates.catalogue import LINK_TEMPLATES

MAX_CONTEXT_BYTES = 64 * 1024
MAX_EXPIRES_IN = 7 * 86_400
# A link's lifetime in minutes: no job outlives MAX_EXPIRES_IN, so neither may the link it expires with.
MAX_LINK_EXPIRATION = MAX_EXPIRES_IN // 60
# Deep enough for any template's context; shallow enough that json, pydantic and Jinja2, which all
# recurse, stay far from Python's recursion limit (pydantic gives up serializing at a few hundred levels).
MAX_JSON_DEPTH = 32


class EmailJob(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    realm: str
    template: str
    to: str
    to_name: str | None = None
    locale: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    created_at: float
    expires_at: float | None = None
    requeued: int = 0

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def summary(self) -> dict[str, Any]:
        """What logs, results and dead-letter listings show: no context (it may hold personal data)."""
        return {"job_id": self.id, "realm": self.realm, "template": self.template, "to": self.to}


def check_line(field: str, value: Any, *, max_length: int = 256) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput.one(field, "must be a non-empty string")
    if has_line_break(value):
        raise InvalidInput.one(field, "must not contain CR, LF or NUL (header injection)")
    if len(value) > max_length:
        raise InvalidInput.one(field, f"is longer than {max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput.one(field, "is not valid Unicode (lone surrogate)") from None
    return value


def json_depth(value: Any, *, stop_after: int = MAX_JSON_DEPTH) -> int:
    """Levels of nested objects and arrays: 0 for a scalar, 1 for {"a": 1}, 2 for {"a": [1]}.

    A walk with a stack of its own, not recursion: the value may be nested deeper than Python's recursion
    limit. It stops at the first level past `stop_after`, so a cycle cannot make it loop.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list | tuple) else []
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > stop_after:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def string_keys(value: Any) -> bool:
    """True when every dict within `value` has only string keys (json.dumps would turn 0 into "0" quietly,
    and the job model then refuses the dict). Call after check_depth: the walk trusts the depth is bounded."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(child for child in item.values() if isinstance(child, dict | list | tuple))
        elif isinstance(item, list | tuple):
            stack.extend(child for child in item if isinstance(child, dict | list | tuple))
    return True


def check_depth(field: str, value: Any, *, limit: int = MAX_JSON_DEPTH) -> None:
    if json_depth(value, stop_after=limit) > limit:
        raise InvalidInput.one(field, f"is nested deeper than {limit} levels of objects and arrays")


def check_context(context: Any, *, field: str = "context", max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """JSON object, at most 64 KiB encoded and 32 levels deep: it travels in the broker message."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise InvalidInput.one(field, "must be a JSON object (a dict)")
    check_depth(field, context, limit=max_depth)  # first: json.dumps recurses
    if not string_keys(context):
        raise InvalidInput.one(field, "must have string keys only (JSON objects do), at every level")
    try:
        encoded = json.dumps(context, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidInput.one(field, f"is not JSON: {error}") from None
    except UnicodeEncodeError:
        raise InvalidInput.one(field, "holds a string that is not valid Unicode (lone surrogate)") from None
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise InvalidInput.one(field, f"is {len(encoded)} bytes as JSON; the limit is {MAX_CONTEXT_BYTES}")
    return context


def check_links(context: dict[str, Any], *, field: str = "context") -> None:
    """The link variables: a link that becomes a button must be http(s) (a javascript: or data: URL is a
    phishing tool), and its lifetime (`link_expiration`, minutes) a number the templates and the job's
    expiry can use: 1 to 7 days."""
    notice = context.get("notice")
    candidates = {f"{field}.link": context.get("link")}
    if isinstance(notice, dict):
        candidates[f"{field}.notice.link"] = notice.get("link")
    for name, link in candidates.items():
        if link is not None and (
            not isinstance(link, str) or not link.lower().startswith(("https://", "http://"))
        ):
            raise InvalidInput.one(name, "must be an http(s) URL")
    minutes = context.get("link_expiration")
    if minutes is not None and not in_range(minutes, 1, MAX_LINK_EXPIRATION):
        raise InvalidInput.one(
            f"{field}.link_expiration", f"must be a number of minutes from 1 to {MAX_LINK_EXPIRATION}"
        )


def in_range(value: Any, low: float, high: float) -> bool:
    """A number (not a bool) from `low` to `high`. Compared as it is: a 400-digit int or an infinite
    float is out of range here, where float() would raise OverflowError."""
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def job_id_for(realm: str, idempotency_key: str | None) -> str:
    """A producer's idempotency key maps to a fixed job id, so enqueueing twice delivers once."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    digest = hashlib.sha256(f"{realm}\x00{idempotency_key}".encode()).hexdigest()[:32]
    return f"idem-{digest}"


def default_expiry(template: str, context: dict[str, Any]) -> float | None:
    """Link e-mails expire with their link (`link_expiration`, minutes, as IAM servers pass it)."""
    minutes = context.get("link_expiration")
    if template in LINK_TEMPLATES and isinstance(minutes, int | float) and not isinstance(minutes, bool):
        return float(minutes) * 60 if minutes > 0 else None
    return None


def new_job(
    realm: str,
    template: str,
    to: str,
    *,
    locale: str | None = None,
    context: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    expires_in: float | None = None,
    to_name: str | None = None,
    allow_utf8: bool = False,
    now: float | None = None,
    context_depth: int = MAX_JSON_DEPTH,
) -> EmailJob:
    """Validate a producer's request into a job, or raise InvalidInput naming the field and the rule.

    `context_depth` is for contexts the service builds around checked input (an event's notice).
    """
    check_realm(realm)
    check_template_name(template)
    check_line("to", to, max_length=254)
    try:
        to = check_address(to, allow_utf8=allow_utf8)
    except ValueError as error:
        raise InvalidInput.one("to", f"not a valid address: {error}") from None
    if to_name is not None:
        check_line("to_name", to_name, max_length=200)
    check_locale("locale", locale)
    if idempotency_key is not None:
        check_line("idempotency_key", idempotency_key, max_length=200)
    context = check_context(context, max_depth=context_depth)
    check_links(context)
    if expires_in is None:
        expires_in = default_expiry(template, context)
    elif (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not 0 < expires_in <= MAX_EXPIRES_IN  # compared as given: float() of a 400-digit int overflows
    ):
        raise InvalidInput.one("expires_in", f"must be a number of seconds from 1 to {MAX_EXPIRES_IN}")
    created = now if now is not None else time.time()
    return EmailJob(
        id=job_id_for(realm, idempotency_key),
        realm=realm,
        template=template,
        to=to,
        to_name=to_name,
        locale=locale,
        context=context,
        idempotency_key=idempotency_key,
        created_at=created,
        expires_at=created + expires_in if expires_in else None,
    )
