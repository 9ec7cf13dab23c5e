"""The Email tab's form as data: which fields it has, what it shows, what a posted form changes, and where
each error goes. Pure functions (tests/test_console_forms.py tests them as tables); the handlers only call.

A posted form holds every field, so it is applied as a whole: what the admin sees is what gets saved. An
empty text field clears the field back to its default; an unticked toggle is off. The secrets are the
exception, as on Keycloak's Email tab: their fields are never filled in, and left empty they keep the
stored value (subject to the store's harvest rule: a new host or a weaker TLS mode asks for them again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from config.smtp import SECRET_FIELDS, SmtpSettings

TEXT, NUMBER, TOGGLE, SECRET, CHOICE = "text", "number", "toggle", "secret", "choice"


@dataclass(frozen=True)
class Field:
    name: str  # the JSON name (config/smtp.py), also the form field's name
    label: str
    kind: str = TEXT
    hint: str = ""
    choices: tuple[str, ...] = ()
    # Shown only when it applies, as on Keycloak's Email tab (static/console.js; without the script every
    # field shows): "auth" while Authentication is on, "password" / "xoauth2" for that type of login.
    when: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    fields: tuple[Field, ...]


SECTIONS = (
    Section("Sender", (
        Field("from", "From", hint="the address mail is sent from, e.g. noreply@acme.example"),
        Field("from_display_name", "From display name"),
        Field("reply_to", "Reply-To"),
        Field("reply_to_display_name", "Reply-To display name"),
        Field("envelope_from", "Envelope From", hint="the bounce address (MAIL FROM); empty: From"),
    )),
    Section("Connection", (
        Field("host", "Host"),
        Field("port", "Port", NUMBER, "25; 465 with SSL; 587 with StartTLS"),
        Field("ssl", "Enable SSL", TOGGLE, "implicit TLS"),
        Field("starttls", "Enable StartTLS", TOGGLE, "never falls back to plaintext"),
        Field("verify_tls", "Verify certificate", TOGGLE, "the server's certificate and host name"),
        Field("connect_timeout", "Connect timeout (s)", NUMBER),
        Field("timeout", "Command timeout (s)", NUMBER),
        Field("data_timeout", "Data timeout (s)", NUMBER, "the reply to the end of a message"),
        Field("allow_utf8", "SMTPUTF8", TOGGLE, "non-ASCII local parts in addresses"),
        Field("verp", "VERP", TOGGLE, "the envelope sender names the job, so bounces map to it"),
    )),
    Section("Authentication", (
        Field("auth", "Authentication", TOGGLE),
        Field("auth_type", "Type", CHOICE, choices=("password", "xoauth2"), when="auth"),
        Field("username", "Username", when="auth"),
        Field("password", "Password", SECRET, "empty: keep the stored password", when="password"),
        Field("oauth_token_url", "XOAUTH2 token URL", hint="https://...", when="xoauth2"),
        Field("oauth_client_id", "XOAUTH2 client id", when="xoauth2"),
        Field("oauth_client_secret", "XOAUTH2 client secret", SECRET, "empty: keep the stored secret",
              when="xoauth2"),
        Field("oauth_scope", "XOAUTH2 scope", when="xoauth2"),
    )),
    Section("Notices and limits", (
        Field("notify_events", "Notified events", hint="IAM event types that send a notice, comma-separated"),
        Field("rate_limit_per_second", "Rate limit per second", NUMBER, "across all workers; empty: none"),
        Field("rate_limit_per_hour", "Rate limit per hour", NUMBER, "across all workers; empty: none"),
    )),
    # Events that carry only a user id (Keycloak's LOGIN_ERROR) get the address from the IAM's admin API.
    Section("User look-up (IAM admin API)", (
        Field("iam_url", "IAM URL", hint="the IAM's base URL, e.g. https://iam.acme.example; empty: no look-ups"),
        Field("iam_realm", "IAM realm", hint="empty: this realm's name"),
        Field("iam_client_id", "Service-account client id"),
        Field("iam_client_secret", "Service-account client secret", SECRET, "empty: keep the stored secret"),
    )),
)  # fmt: skip
FIELDS = tuple(field for section in SECTIONS for field in section.fields)
FIELD_NAMES = frozenset(field.name for field in FIELDS)
LABELS = {field.name: field.label for field in FIELDS}

FormValues = dict[str, Any]  # name -> str (text, number, choice) or bool (toggle); secrets: "" or MASK


def shown_values(settings: SmtpSettings | None) -> FormValues:
    """What the form shows for saved (or draft) settings; None: a realm with nothing saved yet."""
    data = settings.to_public() if settings is not None else {}
    values: FormValues = {}
    for field in FIELDS:
        value = data.get(field.name)
        if field.kind == TOGGLE:
            values[field.name] = bool(value) if settings is not None else _default(field.name)
        elif field.kind == SECRET:
            values[field.name] = ""  # never filled in: the placeholder says whether one is stored
        elif settings is None:
            values[field.name] = _text(_default(field.name))
        else:
            values[field.name] = _text(value)
    return values


def stored_secrets(settings: SmtpSettings | None) -> frozenset[str]:
    """The secret fields that hold a stored value (their placeholder is the mask)."""
    if settings is None:
        return frozenset()
    return frozenset(name for name in SECRET_FIELDS if settings.secret(name))


def posted_values(form: Mapping[str, str]) -> FormValues:
    """A posted form shown again (after an error): as typed, the secrets left out."""
    values: FormValues = {}
    for field in FIELDS:
        if field.kind == TOGGLE:
            values[field.name] = _ticked(form.get(field.name))
        elif field.kind == SECRET:
            values[field.name] = ""
        else:
            values[field.name] = str(form.get(field.name, ""))
    return values


def changes_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The store's changes (JSON names) for a posted Email tab; its rules are the store's to check."""
    changes: dict[str, Any] = {}
    for field in FIELDS:
        raw = form.get(field.name)
        if field.kind == TOGGLE:
            changes[field.name] = _ticked(raw)
        elif field.kind == SECRET:
            if raw:  # empty keeps the stored secret (the field is never pre-filled)
                changes[field.name] = raw
        elif field.name == "notify_events":
            # Empty means "no notices": the form shows the default events, so clearing them is meant.
            changes[field.name] = [part.strip() for part in (raw or "").split(",") if part.strip()]
        else:
            text = (raw or "").strip()
            changes[field.name] = text if text else None
    return changes


def place_errors(problems: Iterable[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(errors by form field, errors for the top of the form): a rule whose field the form has goes next
    to it; anything else ("", a field the form does not show) goes above, with the field's name."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for field, rule in problems:
        name = "from" if field == "from_address" else field.split(".")[0]
        if name in FIELD_NAMES:
            by_field.setdefault(name, []).append(rule)
        else:
            general.append(f"{field}: {rule}" if field else rule)
    return by_field, general


def _ticked(raw: str | None) -> bool:
    """A checkbox is in the form only when ticked."""
    return raw is not None and raw.lower() in ("on", "true", "1", "yes")


def _default(name: str) -> Any:
    """The model's default; None for a required field (From, Host)."""
    field = SmtpSettings.model_fields["from_address" if name == "from" else name]
    return None if field.is_required() else field.get_default()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def form_conflict(pending: str, shown: str, saved_version: int, shown_version: int) -> str | None:
    """Why a button must not act on the form: the realm moved on since the page was shown. None: it did not.

    `pending`: the draft pending now ("" for none); `shown`: the draft the page was opened with; the
    versions likewise. Saving or testing over a draft the admin never saw would apply someone else's
    pending edits unseen (config/conflicts.py, the CLI's rule); testing a form opened before someone else's
    save would make it a draft on top of that save, and a Save would then undo it without a word.
    """
    if pending != shown:
        if not pending:
            return "The draft this page showed was saved or discarded meanwhile: reload the Email tab."
        if not shown:
            return (
                f"Someone started draft {pending} since this page was opened: reload the Email tab to see "
                "it, then Save or Revert it."
            )
        return f"The draft changed since this page was opened (it showed {shown}, {pending} is pending): reload the Email tab."
    if not pending and saved_version != shown_version:
        return (
            f"The settings were saved by someone else since this page was opened (it showed version "
            f"{shown_version}, now version {saved_version}): reload the Email tab and apply your change again."
        )
    return None
