"""A realm's settings to and from their stored JSON, every secret sealed to where it may be sent.

Stored form of one secret (`password_encrypted`, `oauth_client_secret_encrypted`):

    {"v": 2, "kid": "<key id>", "nonce": "<base64>", "ct": "<base64 AES-GCM ciphertext and tag>",
     "bound": {"host": "smtp.acme.example", "port": 587, "username": "bot", "ssl": false, "starttls": true,
               "verify_tls": true, "auth_type": "password", "oauth_token_url": null}}

The associated data is one canonical JSON text (sorted keys, no spaces, ASCII) of the realm, the secret's
name and the settings' current values of the fields named in `bound` (the secret's config.smtp.BOUND_FIELDS
when sealed: the SMTP server's fields for the password and the OAuth2 client secret, iam_url and
iam_client_id for the IAM client secret). So whoever writes to Redis directly, and changes the host, the port, the TLS mode and so on
in the stored JSON, gets settings whose secret no longer opens: the worker refuses them (UnusableSettings)
instead of logging in at the new destination. `bound` itself is neither secret nor trusted: it only lets
the error say which field changed ("host changed from X to Y"); the tag is what decides.

A secret stored as a string is the format before sealing (a Fernet token, bound to nothing): it is still
read, and sealed on the next save or `mailworker secrets rotate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.crypto import MASK, KeyNotHeld, SealBroken, Sealed, SecretBox
from config.edits import SECRET_LABELS, secretless_data, shown
from config.errors import InvalidInput, NotFound
from config.smtp import BOUND_FIELDS, SECRET_FIELDS, SmtpSettings, parse_smtp_settings

# Stands in for a sealed secret while the settings around it are parsed to learn the bound values.
_PLACEHOLDER = "(sealed)"


class UnusableSettings(NotFound):
    """A realm's stored settings exist but cannot be used: a secret's binding no longer holds.

    A NotFound because every reader treats it as having no usable settings: a job is dead-lettered with
    reason `settings` (never retried, never sent), Test Connection fails at its settings stage, the CLI
    prints the one line.
    """


class _Unusable(Exception):
    pass


@dataclass(frozen=True)
class Decoded:
    settings: SmtpSettings  # an unusable secret holds a placeholder: for editing and showing only
    unusable: dict[str, str] = field(default_factory=dict)  # secret -> why it cannot be used
    legacy: tuple[str, ...] = ()  # secrets still in the old (Fernet, unbound) format


def public_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings data as an admin may see it without decrypting: each stored secret as the mask."""
    public = {name: value for name, value in data.items() if not name.endswith("_encrypted")}
    for name in SECRET_FIELDS:
        public.pop(name, None)  # never stored in clear; ignore anything that claims to be
        if encrypted_name(name) in data:
            public[name] = MASK
    return public


def encrypted_name(name: str) -> str:
    return f"{name}_encrypted"


def bound_values(settings: SmtpSettings, secret: str) -> dict[str, Any]:
    """The values of the fields `secret` is sealed to."""
    public = settings.to_public()
    return {name: public[name] for name in BOUND_FIELDS[secret]}


def associated_data(realm: str, secret: str, bound: Mapping[str, Any]) -> bytes:
    text = json.dumps({"realm": realm, "secret": secret, "bound": dict(bound)}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)  # fmt: skip
    return text.encode("ascii")


def seal_secret(box: SecretBox, realm: str, name: str, value: str, settings: SmtpSettings) -> dict[str, Any]:
    bound = bound_values(settings, name)
    return {**box.seal(value, associated_data(realm, name, bound)).to_json(), "bound": bound}


def open_secret(box: SecretBox, realm: str, name: str, stored: Any, current: Mapping[str, Any]) -> str:
    """The secret, if the settings around it (`current`: their public values) are those it was sealed with.

    Raises _Unusable saying why not; ConfigError when its key is not configured (a key problem, not a
    settings one).
    """
    label = SECRET_LABELS[name]
    try:
        sealed = Sealed.from_json(stored)
    except ValueError as error:
        raise _Unusable(f"the stored {label} is damaged ({error})") from None
    recorded = stored.get("bound")
    if not isinstance(recorded, dict) or not recorded or not set(recorded) <= set(BOUND_FIELDS[name]):
        raise _Unusable(f"the stored {label} has a damaged record of the settings it belongs to")
    for bound_field in BOUND_FIELDS[name]:
        if bound_field in recorded and recorded[bound_field] != current[bound_field]:
            raise _Unusable(
                f"{bound_field} changed from {_printable(recorded[bound_field])} to "
                f"{_printable(current[bound_field])} since the {label} was saved, outside `mailworker settings`"
            )
    # The fields named when sealing (all of today's bound fields), with the values the settings have now.
    bound = {name: current[name] for name in recorded}
    try:
        return box.open(sealed, associated_data(realm, name, bound))
    except SealBroken:
        raise _Unusable(
            f"the stored {label} does not belong to these settings (they, or it, were altered outside "
            "`mailworker settings`)"
        ) from None


def _printable(value: Any, limit: int = 80) -> str:
    """A recorded value for a one-line message: it comes from Redis as is, so no control characters."""
    text = "".join(ch for ch in shown(value) if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def encode_settings(settings: SmtpSettings, box: SecretBox, *, realm: str) -> dict[str, Any]:
    """JSON-ready settings with each secret only sealed, under `<name>_encrypted`."""
    data = secretless_data(settings)
    for name in SECRET_FIELDS:
        value = settings.secret(name)
        if value is not None:
            data[encrypted_name(name)] = seal_secret(box, realm, name, value, settings)
    return data


def read_settings(
    data: Mapping[str, Any], box: SecretBox, *, realm: str, lenient_keys: bool = False
) -> Decoded:
    """Stored data back to settings, saying which secrets cannot be used rather than failing.

    Raises ConfigError for a key problem and InvalidInput for stored fields that break a rule. With
    `lenient_keys` (editing and showing), a secret no configured key opens is one that cannot be used,
    like a broken binding: after a lost key, entering the secret again is the way back.
    """
    plain = dict(data)
    sealed: dict[str, Any] = {}
    legacy: list[str] = []
    lost: dict[str, str] = {}  # lenient_keys: secrets no configured key opens
    for name in SECRET_FIELDS:
        stored = plain.pop(encrypted_name(name), None)
        plain.pop(name, None)  # never stored in clear; ignore anything that claims to be
        if stored is None:
            continue
        if isinstance(stored, str):
            try:
                plain[name] = box.decrypt(stored)
            except KeyNotHeld as error:
                if not lenient_keys:
                    raise
                lost[name] = error.reason
                plain[name] = _PLACEHOLDER
            legacy.append(name)
        else:
            sealed[name] = stored
            plain[name] = _PLACEHOLDER
    shape = parse_smtp_settings(plain)
    if not sealed:
        return Decoded(shape, lost, tuple(legacy))
    current = shape.to_public()
    unusable: dict[str, str] = dict(lost)
    for name, stored in sealed.items():
        try:
            plain[name] = open_secret(box, realm, name, stored, current)
        except _Unusable as why:
            unusable[name] = str(why)
        except KeyNotHeld as error:
            if not lenient_keys:
                raise
            unusable[name] = error.reason
    settings = shape if len(unusable) == len(sealed) + len(lost) else parse_smtp_settings(plain)
    return Decoded(settings, unusable, tuple(legacy))


def draft_id_of(entry: Mapping[str, Any], raw: str) -> str:
    """A draft's id; a draft written before drafts had ids gets one from its content (stable on reads)."""
    return str(entry.get("id") or hashlib.sha256(raw.encode()).hexdigest()[:8])


def unusable_message(realm: str, unusable: Mapping[str, str]) -> str:
    name, why = next(iter(unusable.items()))
    label = SECRET_LABELS[name]
    option = f"--{name.replace('_', '-')}-stdin"
    return (
        f"realm {realm}: the stored {label} cannot be used: {why}; enter it again (`mailworker settings "
        f"save --realm {realm} {option}`) or roll back (`mailworker settings history --realm {realm}`)"
    )


def decode_settings(data: Mapping[str, Any], box: SecretBox, *, realm: str) -> SmtpSettings:
    """Stored data back to settings that can be used: UnusableSettings when a secret's binding broke."""
    decoded = read_settings(data, box, realm=realm)
    if decoded.unusable:
        raise UnusableSettings(unusable_message(realm, decoded.unusable))
    return decoded.settings


@dataclass
class Rotation:
    resealed: int = 0  # secrets sealed again with the first key
    migrated: int = 0  # ... of which were in the old format
    skipped: list[str] = field(default_factory=list)  # what could not be, and why

    def add(self, other: Rotation) -> None:
        self.resealed += other.resealed
        self.migrated += other.migrated
        self.skipped += other.skipped


def rotate_data(data: dict[str, Any], box: SecretBox, *, realm: str, where: str) -> Rotation:
    """Seal every secret of stored data again with the first key, in place (old-format ones too).

    A secret that cannot be used is left as it is and reported: sealing it again would bind it to
    settings it was never entered for. `where` names the entry in the report.
    """
    result = Rotation()
    if not any(encrypted_name(name) in data for name in SECRET_FIELDS):
        return result
    try:
        decoded = read_settings(data, box, realm=realm)
    except InvalidInput as error:
        result.skipped.append(f"{where}: the stored settings break a rule ({error})")
        return result
    for name in SECRET_FIELDS:
        if encrypted_name(name) not in data:
            continue
        if name in decoded.unusable:
            result.skipped.append(f"{where}: {decoded.unusable[name]}")
            continue
        value = decoded.settings.secret(name)
        assert value is not None
        data[encrypted_name(name)] = seal_secret(box, realm, name, value, decoded.settings)
        result.resealed += 1
        result.migrated += name in decoded.legacy
    return result
