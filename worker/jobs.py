"""The e-mail job: what a producer enqueues and a worker delivers. Validation is pure and runs at enqueue.

A job never carries a secret: the worker reads the realm's settings (and password) from the store.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from config.errors import InvalidInput
from config.names import check_realm
from config.smtp import check_address, has_line_break

MAX_CONTEXT_BYTES = 64 * 1024
MAX_EXPIRES_IN = 7 * 86_400
TEMPLATE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*\Z")
# Templates whose mail carries a link with a lifetime: by default the job expires with the link.
LINK_TEMPLATES = frozenset(
    {
        "email-verification",
        "password-reset",
        "execute-actions",
        "email-update-confirmation",
        "identity-provider-link",
    }
)


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


def check_context(context: Any, *, field: str = "context") -> dict[str, Any]:
    """JSON object, at most 64 KiB encoded: it travels in the broker message."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise InvalidInput.one(field, "must be a JSON object (a dict)")
    try:
        encoded = json.dumps(context, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise InvalidInput.one(field, f"is not JSON: {error}") from None
    except UnicodeEncodeError:
        raise InvalidInput.one(field, "holds a string that is not valid Unicode (lone surrogate)") from None
    except RecursionError:
        raise InvalidInput.one(field, "is nested too deeply") from None
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise InvalidInput.one(field, f"is {len(encoded)} bytes as JSON; the limit is {MAX_CONTEXT_BYTES}")
    return context


def check_links(context: dict[str, Any]) -> None:
    """Links that become buttons must be http(s): a javascript: or data: URL is a phishing tool."""
    notice = context.get("notice")
    candidates = {"context.link": context.get("link")}
    if isinstance(notice, dict):
        candidates["context.notice.link"] = notice.get("link")
    for field, link in candidates.items():
        if link is not None and (
            not isinstance(link, str) or not link.lower().startswith(("https://", "http://"))
        ):
            raise InvalidInput.one(field, "must be an http(s) URL")


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
) -> EmailJob:
    """Validate a producer's request into a job, or raise InvalidInput naming the field and the rule."""
    check_realm(realm)
    if not isinstance(template, str) or not TEMPLATE_PATTERN.match(template):
        raise InvalidInput.one("template", "must be a template name like 'password-reset'")
    check_line("to", to, max_length=254)
    try:
        to = check_address(to, allow_utf8=allow_utf8)
    except ValueError as error:
        raise InvalidInput.one("to", f"not a valid address: {error}") from None
    if to_name is not None:
        check_line("to_name", to_name, max_length=200)
    if locale is not None and (not isinstance(locale, str) or not LOCALE_PATTERN.match(locale)):
        raise InvalidInput.one("locale", "must be a language tag like 'en', 'de' or 'pt-BR'")
    if idempotency_key is not None:
        check_line("idempotency_key", idempotency_key, max_length=200)
    context = check_context(context)
    check_links(context)
    if expires_in is None:
        expires_in = default_expiry(template, context)
    elif (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not 0 < expires_in <= MAX_EXPIRES_IN
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
