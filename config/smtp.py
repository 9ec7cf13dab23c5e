"""The realm's SMTP settings: the Email tab's fields and their rules.

`parse_smtp_settings` is the single gate: every path that stores or uses settings goes through it, and a
broken rule comes back as an `InvalidInput` naming the field (JSON name) and the rule.
"""

from __future__ import annotations

from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from config.crypto import MASK
from config.errors import InvalidInput
from config.urls import parse_url
from templates.catalogue import DEFAULT_NOTIFY_EVENTS

# Fields whose value goes into a header or an SMTP command: CR, LF or NUL there would inject headers or
# commands. The password is sent base64-encoded, but AUTH PLAIN separates with NUL, so it is checked too.
LINE_SAFE_FIELDS = (
    "from",
    "from_display_name",
    "reply_to",
    "reply_to_display_name",
    "envelope_from",
    "host",
    "username",
    "password",
    "oauth_token_url",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
    "iam_url",
    "iam_realm",
    "iam_client_id",
    "iam_client_secret",
)
ADDRESS_FIELDS = ("from", "reply_to", "envelope_from")
# Where and how a stored secret is sent (the password to the SMTP server; the client secret to the token
# endpoint, and the token it buys to the SMTP server). A masked secret may stand for the stored one only
# while a change of these does not weaken that (config/edits.py), and each secret is sealed with their
# values as associated data (config/codec.py): changed behind the store's back, the secret is unusable.
CREDENTIAL_BOUND_FIELDS = (
    "host",
    "port",
    "username",
    "ssl",
    "starttls",
    "verify_tls",
    "auth_type",
    "oauth_token_url",
)
# The IAM client secret goes only to the IAM's token endpoint: it is bound to where that is and to whom it
# speaks for, not to the SMTP server's fields (a new SMTP host must not ask for it, a new iam_url must).
IAM_BOUND_FIELDS = ("iam_url", "iam_client_id")
SECRET_FIELDS = ("password", "oauth_client_secret", "iam_client_secret")
# Each secret and the fields it is sealed to (config/codec.py) and asked again for (config/edits.py).
BOUND_FIELDS: dict[str, tuple[str, ...]] = {
    "password": CREDENTIAL_BOUND_FIELDS,
    "oauth_client_secret": CREDENTIAL_BOUND_FIELDS,
    "iam_client_secret": IAM_BOUND_FIELDS,
}
# The fields of the IAM admin API look-up (worker/delivery/iam_users.py): all of them, or none.
IAM_FIELDS = ("iam_url", "iam_client_id", "iam_client_secret")

# How long the reply to the end of DATA may take: RFC 5321 4.5.3.2.6 gives the server 10 minutes, since it
# may scan or queue the message before answering. The worker's task time limit must exceed it.
DEFAULT_DATA_TIMEOUT = 600.0


def has_line_break(value: str) -> bool:
    return "\r" in value or "\n" in value or "\x00" in value


def check_address(value: str, *, allow_utf8: bool) -> str:
    """An e-mail address as email-validator sees it: no DNS look-up, IDN domains allowed.

    A non-ASCII local part (SMTPUTF8) only with allow_utf8. Returns the normalised form.
    """
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=allow_utf8)
    except EmailNotValidError as error:
        message = str(error)
        if not allow_utf8 and "internationalized" in message.lower():
            message += " (turn on allow_utf8 for addresses with a non-ASCII local part)"
        raise ValueError(message) from None
    return str(result.normalized)


class SmtpSettings(BaseModel):
    """One realm's validated SMTP settings. JSON names are those of the Email tab."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    from_address: str = Field(alias="from", max_length=254)
    from_display_name: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=254)
    reply_to_display_name: str | None = Field(default=None, max_length=200)
    envelope_from: str | None = Field(default=None, max_length=254)
    host: str = Field(max_length=253)
    port: int = Field(default=25, ge=1, le=65535)
    ssl: bool = False
    starttls: bool = False
    auth: bool = False
    auth_type: Literal["password", "xoauth2"] = "password"
    username: str | None = Field(default=None, max_length=256)
    password: SecretStr | None = Field(default=None, max_length=1024)
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    timeout: float = Field(default=10.0, gt=0, le=300)
    # Only for the reply to the final "." of DATA: giving up there leaves it unknown whether the server
    # took the message, so it gets the RFC's long deadline rather than `timeout`.
    data_timeout: float = Field(default=DEFAULT_DATA_TIMEOUT, gt=0, le=3600)
    allow_utf8: bool = False
    # Certificates and host names are verified unless an admin turns it off on purpose (logged on use).
    verify_tls: bool = True
    # VERP (docs/bounces.md): each transactional job's MAIL FROM names it, so a bounce maps to its job.
    verp: bool = False

    # Provider limits, enforced across all workers with a shared limiter in Redis.
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=100_000)
    rate_limit_per_hour: int | None = Field(default=None, gt=0)

    # IAM event types that send a notice to the user.
    notify_events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS

    # OAuth2 (XOAUTH2) client-credentials grant, for providers retiring SMTP passwords.
    oauth_token_url: str | None = Field(default=None, max_length=2048)
    oauth_client_id: str | None = Field(default=None, max_length=512)
    oauth_client_secret: SecretStr | None = Field(default=None, max_length=4096)
    oauth_scope: str | None = Field(default=None, max_length=1024)

    # The IAM's admin REST API (Keycloak), to find the address of a user an event names only by id: a
    # service-account client of the IAM realm (client credentials) with the right to view users.
    iam_url: str | None = Field(default=None, max_length=2048)  # the IAM's base URL, https://iam.example
    iam_realm: str | None = Field(default=None, max_length=255)  # default: this realm's name
    iam_client_id: str | None = Field(default=None, max_length=512)
    iam_client_secret: SecretStr | None = Field(default=None, max_length=4096)

    @field_validator("from_display_name", "reply_to", "reply_to_display_name", "envelope_from", "username",
                     "oauth_token_url", "oauth_client_id", "oauth_scope", "iam_url", "iam_realm", "iam_client_id",
                     "iam_client_secret", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty IAM client secret is no secret: kept as one, it was sealed and then counted as set when
        # read back, so a draft that passed at write failed the "go together" rule at read (the fuzzer).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("port", mode="before")
    @classmethod
    def _port_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number from 1 to 65535")
        return value

    @field_validator("host")
    @classmethod
    def _host_is_a_name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("is required")
        if any(ch.isspace() or not ch.isprintable() for ch in value) or "/" in value or "@" in value:
            raise ValueError(
                "must be a host name or an IP address (no spaces, control characters, slashes, scheme or user)"
            )
        return value

    @field_validator("notify_events", mode="before")
    @classmethod
    def _event_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", ",").split(",") if part]
        if isinstance(value, list | tuple):
            # Only strings are event types; anything else is left for the field's own rule to refuse.
            return tuple(v.strip().upper() if isinstance(v, str) else v for v in value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_line_breaks(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problems = []
            for name in LINE_SAFE_FIELDS:
                value = data.get(name)
                if value is None and name == "from":
                    value = data.get("from_address")
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if isinstance(value, str) and has_line_break(value):
                    problems.append((name, "must not contain CR, LF or NUL (header injection)"))
            if problems:
                raise InvalidInput(problems)
        return data

    @model_validator(mode="after")
    def _rules(self) -> SmtpSettings:
        problems: list[tuple[str, str]] = []
        for name in ADDRESS_FIELDS:
            attr = "from_address" if name == "from" else name
            value = getattr(self, attr)
            if value is None or (name != "from" and value == ""):
                continue
            try:
                object.__setattr__(self, attr, check_address(value, allow_utf8=self.allow_utf8))
            except ValueError as error:
                problems.append((name, f"not a valid address: {error}"))
        if self.ssl and self.starttls:
            problems.append(
                (
                    "ssl",
                    "ssl and starttls cannot both be on: implicit TLS (ssl, usually port 465) "
                    "or StartTLS (usually 587), not both",
                )
            )
        if self.auth:
            if not self.username:
                problems.append(("username", "is required when auth is on"))
            if self.auth_type == "password" and (
                self.password is None or not self.password.get_secret_value()
            ):
                problems.append(("password", "is required when auth is on"))
            if self.auth_type == "xoauth2":
                for name in ("oauth_token_url", "oauth_client_id", "oauth_client_secret"):
                    if not getattr(self, name):
                        problems.append((name, "is required when auth_type is xoauth2"))
        if self.oauth_token_url:
            # Only what makes a URL callable at all: whether it may be called (https, public address)
            # depends on the service's settings and is checked at save and on use (config/urls.py).
            try:
                parse_url("oauth_token_url", self.oauth_token_url)
            except InvalidInput as error:
                problems.extend(error.problems)
        if any(getattr(self, name) for name in IAM_FIELDS):
            for name in IAM_FIELDS:
                if not getattr(self, name):
                    problems.append((name, "is required for user look-ups: iam_url, iam_client_id and "
                                           "iam_client_secret go together"))  # fmt: skip
        if self.iam_url:
            try:
                parse_url("iam_url", self.iam_url)
            except InvalidInput as error:
                problems.extend(error.problems)
        if self.iam_realm is not None and not self.iam_realm.isprintable():
            problems.append(("iam_realm", "must contain printable characters only"))
        for name in ("from_display_name", "reply_to_display_name"):
            value = getattr(self, name)
            if value is not None and not value.isprintable():
                problems.append((name, "must contain printable characters only"))
        if self.reply_to_display_name and not self.reply_to:
            problems.append(("reply_to", "is required when reply_to_display_name is set"))
        if problems:
            raise InvalidInput(problems)
        return self

    # ---- views ----------------------------------------------------------------------------------------

    @property
    def envelope_sender(self) -> str:
        """MAIL FROM (the Return-Path): the bounce address when set, else From."""
        return self.envelope_from or self.from_address

    def secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def to_public(self) -> dict[str, Any]:
        """JSON names, secrets masked: what the CLI, results and logs may show."""
        data = self.model_dump(by_alias=True, mode="json")
        for name in SECRET_FIELDS:
            data[name] = MASK if getattr(self, name) is not None else None
        data["notify_events"] = list(self.notify_events)
        return data

    def to_plain(self) -> dict[str, Any]:
        """JSON names with secrets in clear: only for encrypting into the store, never for output."""
        data = self.to_public()
        for name in SECRET_FIELDS:
            data[name] = self.secret(name)
        return data


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else ""
    return "from" if name == "from_address" else name


def parse_smtp_settings(data: dict[str, Any]) -> SmtpSettings:
    """Validate a dict of JSON names; every broken rule is reported with its field."""
    if not isinstance(data, dict):
        raise InvalidInput.one("settings", "must be a JSON object")
    try:
        return SmtpSettings.model_validate(data)
    except InvalidInput:
        raise
    except ValidationError as error:
        problems: list[tuple[str, str]] = []
        for item in error.errors():
            ctx_error = (item.get("ctx") or {}).get("error")
            if isinstance(ctx_error, InvalidInput):
                problems.extend(ctx_error.problems)
                continue
            field = _field_name(item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing" or (item["type"] == "string_type" and item.get("input") is None):
                message = "is required"
            elif field == "port" and item["type"] in (
                "greater_than_equal",
                "less_than_equal",
                "int_parsing",
                "int_from_float",
            ):
                message = "must be a whole number from 1 to 65535"
            elif item["type"] == "extra_forbidden":
                message = "is not a setting (unknown field)"
            problems.append((field, message))
        raise InvalidInput(problems) from None
