"""Jinja2 rendering of the e-mail templates (subject, text, HTML), per realm and locale."""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATE_NAMES = (
    "email-verification",
    "password-reset",
    "execute-actions",
    "email-update-confirmation",
    "identity-provider-link",
    "email-test",
    "event-login_error",
    "event-update_password",
    "event-update_totp",
    "event-remove_totp",
    "event-update_credential",
    "event-remove_credential",
)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
