"""Editing a realm's settings, as pure functions: changes applied onto a base, the rule that keeps a
stored secret from being sent anywhere weaker, and the list of what an edit changes.

The secret rule ("harvest rule"): a secret given as MASK, or not given at all, stands for the stored one
only while no change weakens where or how it is sent (`needs_secret_again`). Otherwise whoever may edit
the settings, without knowing the password, could have the worker hand it to a server of their choosing:
a new host, a port they listen on, plaintext instead of TLS, TLS without checking the certificate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticUndefined

from config.crypto import MASK
from config.errors import InvalidInput
from config.smtp import BOUND_FIELDS, SECRET_FIELDS, SmtpSettings, parse_smtp_settings
from config.urls import check_public_url

SECRET_LABELS = {"password": "password", "oauth_client_secret": "OAuth2 client secret",
                 "iam_client_secret": "IAM client secret"}  # fmt: skip
# The secrets one of which the SMTP login uses, chosen by auth_type.
SMTP_SECRETS = ("password", "oauth_client_secret")
# At most this many changes are spelled out in one line (a conflict message); the rest are counted.
MAX_CHANGES_SHOWN = 12


def apply_changes(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with `changes` (JSON names) applied; a value of None clears the field back to its default."""
    merged = dict(data)
    for name, value in changes.items():
        name = "from" if name == "from_address" else name
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def secretless_data(settings: SmtpSettings) -> dict[str, Any]:
    """JSON names without the secret fields: the base an edit starts from."""
    data = settings.to_public()
    for name in SECRET_FIELDS:
        data.pop(name, None)
    return data


# ---- the secret rule ----------------------------------------------------------------------------------


def needs_secret_again(field: str, before: Any, after: Any, secret: str = "password") -> bool:
    """Whether changing a field bound to `secret` (config.smtp.BOUND_FIELDS) from `before` to `after`
    must ask for the stored secret again.

    Any other destination (host, port, token URL, IAM URL), another login name or client id, another TLS
    mode (plain, StartTLS, implicit TLS) or another auth type does. Turning certificate checks on does not:
    it only narrows who can receive the secret. Fields outside the bound set (timeouts, From, auth on/off;
    the SMTP fields for the IAM client secret) never do.
    """
    if field not in BOUND_FIELDS[secret] or before == after:
        return False
    if field == "verify_tls":
        return not after
    return True


def weakening_change(
    before: SmtpSettings, after: SmtpSettings, secret: str = "password"
) -> tuple[str, Any, Any] | None:
    """The first field bound to `secret` whose change needs it again, as (field, before, after)."""
    old, new = before.to_public(), after.to_public()
    for name in BOUND_FIELDS[secret]:
        if needs_secret_again(name, old[name], new[name], secret):
            return name, old[name], new[name]
    return None


def check_credentials_unchanged(base: SmtpSettings, edited: SmtpSettings, secret: str) -> None:
    changed = weakening_change(base, edited, secret)
    if changed is None:
        return
    field, before, after = changed
    label = SECRET_LABELS[secret]
    raise InvalidInput.one(
        secret,
        f"{field} changed from {shown(before)} to {shown(after)}: enter the {label} again "
        f"(a stored {label} is never sent to a new server, or over a weaker connection)",
    )


def edit_settings(
    base: SmtpSettings | None,
    changes: Mapping[str, Any],
    *,
    unusable: Mapping[str, str] | None = None,
    allow_private_urls: bool = False,
) -> SmtpSettings:
    """Apply `changes` onto `base` and validate (raises InvalidInput naming the fields).

    `unusable`: secrets of the base that cannot be used any more (their binding broke, config/codec.py),
    with the reason: such a secret is never kept; it has to be entered again (or cleared).
    `allow_private_urls`: the service's MAILWORKER_ALLOW_PRIVATE_URLS, for the token and IAM URLs
    (config/urls.py).
    """
    unusable = unusable or {}
    data = secretless_data(base) if base is not None else {}
    data = apply_changes(data, {k: v for k, v in changes.items() if not (k in SECRET_FIELDS and v == MASK)})
    kept: list[str] = []
    for name in SECRET_FIELDS:
        if name in changes and changes[name] != MASK:
            continue  # a new value, or None to clear it
        stored = base.secret(name) if base is not None else None
        if stored is None:
            if changes.get(name) == MASK:
                raise InvalidInput.one(
                    name, f"is masked ({MASK}) but no {SECRET_LABELS[name]} is stored: enter the value itself"
                )
            continue
        data[name] = stored
        kept.append(name)
    # A stored secret the auth_type does not use is forgotten, not asked for again: switching a realm
    # from password to xoauth2 (or back) must not need the secret of the other kind.
    in_use = "oauth_client_secret" if data.get("auth_type") == "xoauth2" else "password"
    for name in [n for n in kept if n in SMTP_SECRETS and n != in_use and changes.get(n) != MASK]:
        data.pop(name)
        kept.remove(name)
    # Likewise the IAM client secret goes with its URL: clearing iam_url turns user look-ups off.
    if "iam_client_secret" in kept and not data.get("iam_url") and changes.get("iam_client_secret") != MASK:
        data.pop("iam_client_secret")
        kept.remove("iam_client_secret")
    for name in kept:
        if name in unusable:
            raise InvalidInput.one(name, f"{unusable[name]}: enter the {SECRET_LABELS[name]} again")
    edited = parse_smtp_settings(data)
    for name in ("oauth_token_url", "iam_url"):
        url = getattr(edited, name)
        if url:
            check_public_url(name, url, allow_private=allow_private_urls)
    if base is not None:
        for name in kept:
            check_credentials_unchanged(base, edited, name)
    return edited


# ---- what an edit changes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One field an edit changes. Secrets appear only as MASK (set) or None (not set)."""

    field: str
    before: Any
    after: Any
    secret: bool = False

    def __str__(self) -> str:
        text = f"{self.field}: {_clipped(shown(self.before))} -> {_clipped(shown(self.after))}"
        return text + (" (a new value)" if self.secret and self.before and self.after else "")

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


def _default(name: str) -> Any:
    field = SmtpSettings.model_fields["from_address" if name == "from" else name]
    value = field.default
    if value is PydanticUndefined:
        return PydanticUndefined
    return list(value) if isinstance(value, tuple) else value


def diff_settings(before: SmtpSettings | None, after: SmtpSettings) -> list[Change]:
    """What going from `before` (None: nothing saved) to `after` changes, in the fields' order."""
    old = before.to_public() if before is not None else {}
    changes: list[Change] = []
    for name, value in after.to_public().items():
        if name in SECRET_FIELDS:
            was = before.secret(name) if before is not None else None
            now = after.secret(name)
            if was != now:
                changes.append(Change(name, MASK if was else None, MASK if now else None, secret=True))
        elif before is None:
            if value is not None and value != _default(name):
                changes.append(Change(name, None, value))
        elif old.get(name) != value:
            changes.append(Change(name, old.get(name), value))
    return changes


def describe_changes(changes: list[Change]) -> str:
    """The changes on one line ("host: a -> b; port: 25 -> 587"), the first MAX_CHANGES_SHOWN of them."""
    if not changes:
        return "no field changes"
    text = "; ".join(str(change) for change in changes[:MAX_CHANGES_SHOWN])
    more = len(changes) - MAX_CHANGES_SHOWN
    return text + (f"; and {more} more" if more > 0 else "")


def _clipped(text: str, limit: int = 80) -> str:
    """A value for a one-line message: no control characters, not longer than `limit`."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value)


def check_note(note: Any, *, field: str = "note", limit: int = 500) -> str | None:
    """A save's note (or who saved): one printable line, valid Unicode, bounded (`settings history`)."""
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > limit:
        raise InvalidInput.one(field, f"must be text of at most {limit} characters")
    if any(not ch.isprintable() for ch in note) or any("\ud800" <= ch <= "\udfff" for ch in note):
        raise InvalidInput.one(field, "must be one line of printable text (valid Unicode)")
    return note
