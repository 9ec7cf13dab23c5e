"""The shipped templates and bundles: every mail in every locale, the variables each needs, the strings."""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import pytest

from worker.content.render import (
    DEFAULT_TEMPLATES_DIR,
    TEMPLATE_NAMES,
    TEMPLATE_VARIABLES,
    RenderError,
    TemplateRenderer,
    human_duration,
)

LOCALES = ("en", "de", "fr")
LINK = "https://iam.example.com/realms/acme/login-actions/action-token?key=eyJhbGci.x-y_z&client_id=account"
LINK_TEMPLATES = (
    "email-verification",
    "password-reset",
    "execute-actions",
    "email-update-confirmation",
    "identity-provider-link",
)


def full_context() -> dict[str, Any]:
    """Everything an IAM server passes, for any template."""
    return {
        "realm_name": "Acme Corp",
        "user": {"username": "jdoe", "first_name": "Jane", "last_name": "Doe", "email": "jane@example.com"},
        "link": LINK,
        "link_expiration": 90,
        "required_actions": ["UPDATE_PASSWORD", "CONFIGURE_TOTP", "VERIFY_EMAIL", "UPDATE_PROFILE"],
        "new_email": "jane.new@example.com",
        "identity_provider": {"alias": "github", "display_name": "GitHub"},
        "identity_provider_username": "jane-gh",
        "event": {
            "type": "UPDATE_CREDENTIAL",
            "time": 1714572180000,
            "ip_address": "203.0.113.7",
            "client_id": "account-console",
            "details": {"credential_type": "otp"},
        },
        "notice": {"subject": "Our privacy policy changes", "body": "From June 1, Jane, ...", "link": LINK},
    }


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


def bundle(locale: str) -> dict[str, str]:
    return json.loads((DEFAULT_TEMPLATES_DIR / "messages" / f"{locale}.json").read_text(encoding="utf-8"))


# --- every template, every locale ------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_every_template_renders_in_every_locale(
    renderer: TemplateRenderer, template: str, locale: str
) -> None:
    mail = renderer.render("acme", template, locale, full_context())

    assert mail.subject and mail.subject == mail.subject.strip()
    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert mail.subject == bundle(locale)[f"{template}.subject"].format(
        realm_name="Acme Corp", identity_provider="GitHub", notice_subject="Our privacy policy changes"
    )
    assert mail.text.strip() and mail.html.strip()
    assert mail.html.lstrip().startswith("<!DOCTYPE html>")
    assert f'<html lang="{locale}">' in mail.html
    assert "Jane" in mail.text and "Jane" in mail.html
    assert "{" not in mail.text and "{" not in mail.html  # no placeholder left unfilled
    assert "\n\n\n" not in mail.text
    if template in LINK_TEMPLATES:
        assert LINK in mail.text
        assert LINK.replace("&", "&amp;") in mail.html
        assert LINK not in mail.html  # the raw '&' never reaches HTML
        assert unescape(mail.html).count(LINK) == 3  # button href, fallback href and fallback text


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_translations_differ_from_english(renderer: TemplateRenderer, template: str) -> None:
    english = renderer.render("acme", template, "en", full_context())
    for locale in ("de", "fr"):
        other = renderer.render("acme", template, locale, full_context())
        assert other.subject != english.subject
        assert other.text != english.text


def test_language_strings_land_in_the_right_mail(renderer: TemplateRenderer) -> None:
    de = renderer.render("acme", "password-reset", "de", full_context())
    assert de.subject == "Setzen Sie Ihr Passwort zurück"
    assert "Hallo Jane," in de.text
    assert "Dieser Link ist 1 Stunde 30 Minuten lang gültig." in de.text
    assert "Passwort zurücksetzen" in de.html
    fr = renderer.render("acme", "password-reset", "fr", full_context())
    assert fr.subject == "Réinitialisez votre mot de passe"
    assert "Ce lien expirera dans 1 heure 30 minutes." in fr.text


def test_execute_actions_lists_translated_actions(renderer: TemplateRenderer) -> None:
    context = full_context() | {"required_actions": ["UPDATE_PASSWORD", "CONFIGURE_TOTP", "CUSTOM_ACTION"]}
    de = renderer.render("acme", "execute-actions", "de", context)
    assert "  - Passwort ändern\n  - Einmalpasswörter (OTP) einrichten\n  - CUSTOM_ACTION\n" in de.text
    assert "<li>Passwort ändern</li>" in de.html
    assert "<li>CUSTOM_ACTION</li>" in de.html  # an action without a name is shown by its id


def test_identity_provider_link_names_provider_and_user(renderer: TemplateRenderer) -> None:
    mail = renderer.render("acme", "identity-provider-link", "en", full_context())
    assert mail.subject == "Link your GitHub account"
    assert "the GitHub account of user jane-gh" in mail.text
    context = full_context()
    del context["identity_provider_username"]
    context["identity_provider"] = {"alias": "github"}
    mail = renderer.render("acme", "identity-provider-link", "en", context)
    assert mail.subject == "Link your github account"
    assert "with a github account" in mail.text


def test_email_update_confirmation_names_new_address(renderer: TemplateRenderer) -> None:
    mail = renderer.render("acme", "email-update-confirmation", "fr", full_context())
    assert "jane.new@example.com" in mail.text and "jane.new@example.com" in mail.html


def test_event_notice_shows_time_address_and_application(renderer: TemplateRenderer) -> None:
    mail = renderer.render("acme", "event-update_credential", "de", full_context())
    assert "Einmalpasswort (OTP)" in mail.text
    assert "Zeitpunkt: 1. Mai 2024 um 14:03 UTC" in mail.text
    assert "IP-Adresse: 203.0.113.7" in mail.text
    assert "Anwendung: account-console" in mail.text
    en = renderer.render("acme", "event-login_error", "en", full_context())
    assert "Time: May 1, 2024 at 14:03 UTC" in en.text


def test_event_notice_with_what_an_event_parser_leaves_empty(renderer: TemplateRenderer) -> None:
    """worker/jobs/events.py passes '' for unknown fields and None for an unknown time."""
    context = {
        "realm_name": "acme",
        "user": {"username": "bob", "first_name": "", "last_name": "", "email": "bob@example.com"},
        "event": {"type": "LOGIN_ERROR", "time": None, "ip_address": "", "client_id": "", "details": {}},
    }
    for template in [name for name in TEMPLATE_NAMES if name.startswith("event-")]:
        mail = renderer.render("acme", template, "en", context)
        assert mail.text.startswith("Hello bob,")
        assert "IP address" not in mail.text and "Time:" not in mail.text
        assert "padding:2px 0" not in mail.html  # no empty details table


@pytest.mark.parametrize(
    "time, shown",
    [
        ("2024-05-01T14:03:00Z", "May 1, 2024 at 14:03 UTC"),
        ("2024-05-01T16:03:00+02:00", "May 1, 2024 at 14:03 UTC"),
        ("2024-05-01T14:03:00", "May 1, 2024 at 14:03 UTC"),
        (1714572180000, "May 1, 2024 at 14:03 UTC"),
        ("1714572180000", "May 1, 2024 at 14:03 UTC"),
        (1714572180, "May 1, 2024 at 14:03 UTC"),
        ("yesterday", "yesterday"),
    ],
)
def test_event_time_forms(renderer: TemplateRenderer, time: object, shown: str) -> None:
    context = full_context()
    context["event"]["time"] = time
    assert f"Time: {shown}" in renderer.render("acme", "event-login_error", "en", context).text


# --- greeting, escaping, header safety -------------------------------------------------------------


def test_greeting_uses_first_name_else_username(renderer: TemplateRenderer) -> None:
    context = full_context()
    assert renderer.render("acme", "password-reset", "en", context).text.startswith("Hello Jane,")
    context["user"] = {"username": "jdoe", "first_name": ""}
    assert renderer.render("acme", "password-reset", "en", context).text.startswith("Hello jdoe,")
    context["user"] = {"username": "jdoe"}
    assert renderer.render("acme", "password-reset", "de", context).text.startswith("Hallo jdoe,")


def test_email_test_without_user_greets_anyone(renderer: TemplateRenderer) -> None:
    mail = renderer.render("acme", "email-test", "en", {})
    assert mail.subject == "Test message from acme"  # realm_name defaults to the realm id
    assert mail.text.startswith("Hello,\n")


def test_html_is_escaped_and_text_is_not(renderer: TemplateRenderer) -> None:
    context = full_context()
    context["user"]["first_name"] = "<script>alert(1)</script>"
    context["realm_name"] = 'A&B "Corp"'
    mail = renderer.render("acme", "password-reset", "en", context)
    assert "<script>" not in mail.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "A&amp;B &#34;Corp&#34;" in mail.html
    assert "Hello <script>alert(1)</script>," in mail.text
    assert 'A&B "Corp"' in mail.text


def test_link_with_quote_cannot_break_out_of_href(renderer: TemplateRenderer) -> None:
    context = full_context() | {"link": 'https://x.example/a" onmouseover="evil()'}
    mail = renderer.render("acme", "password-reset", "en", context)
    assert 'onmouseover="evil()' not in mail.html
    assert "&#34; onmouseover=&#34;evil()" in mail.html


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_line_breaks_in_values_never_reach_the_subject(renderer: TemplateRenderer, template: str) -> None:
    context = full_context()
    context["realm_name"] = "Acme\r\nBcc: victim@example.com"
    context["user"]["first_name"] = "Jane\r\nBcc: x@y"
    context["identity_provider"]["display_name"] = "Git\nHub\r\nBcc: x@y"
    mail = renderer.render("acme", template, "en", context)
    assert not re.search(r"[\r\n\x00-\x1f]", mail.subject)
    assert mail.subject == " ".join(mail.subject.split())


# --- variables: required fail loudly, optional may be left out -------------------------------------


def test_every_template_documents_its_variables() -> None:
    assert set(TEMPLATE_VARIABLES) == set(TEMPLATE_NAMES)


@pytest.mark.parametrize(
    "template, variable",
    [(name, variable) for name, spec in TEMPLATE_VARIABLES.items() for variable in spec.required],
)
def test_missing_required_variable_fails_naming_it(
    renderer: TemplateRenderer, template: str, variable: str
) -> None:
    context = full_context()
    del context[variable]
    with pytest.raises(RenderError, match=rf"template {template} \(text.*'{variable}' is undefined"):
        renderer.render("acme", template, "en", context)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_only_documented_variables_are_needed(renderer: TemplateRenderer, template: str) -> None:
    spec = TEMPLATE_VARIABLES[template]
    minimal = {key: value for key, value in full_context().items() if key in spec.required}
    mail = renderer.render("acme", template, "fr", minimal)
    assert mail.subject and mail.text and mail.html


def test_user_without_username_or_first_name_fails(renderer: TemplateRenderer) -> None:
    context = full_context() | {"user": {"email": "jane@example.com"}}
    with pytest.raises(RenderError, match="username"):
        renderer.render("acme", "password-reset", "en", context)


def test_missing_link_in_password_reset(renderer: TemplateRenderer) -> None:
    context = full_context()
    del context["link"]
    with pytest.raises(RenderError) as caught:
        renderer.render("acme", "password-reset", "en", context)
    assert str(caught.value).startswith("template password-reset (text")
    assert "'link' is undefined" in str(caught.value)


@pytest.mark.parametrize("locale", LOCALES)
def test_link_expiration_absent_or_null_is_left_out(renderer: TemplateRenderer, locale: str) -> None:
    context = full_context()
    context["link_expiration"] = None
    with_null = renderer.render("acme", "email-verification", locale, context)
    del context["link_expiration"]
    without = renderer.render("acme", "email-verification", locale, context)
    assert with_null == without
    expires_prefix = bundle(locale)["link.expires"].split("{")[0]
    assert expires_prefix not in without.text and expires_prefix not in without.html
    assert expires_prefix in renderer.render("acme", "email-verification", locale, full_context()).text


def test_negative_link_expiration_is_a_render_error(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="link_expiration must not be negative"):
        renderer.render("acme", "password-reset", "en", full_context() | {"link_expiration": -5})


# --- human_duration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "minutes, en, de, fr",
    [
        (0, "0 minutes", "0 Minuten", "0 minute"),
        (1, "1 minute", "1 Minute", "1 minute"),
        (5, "5 minutes", "5 Minuten", "5 minutes"),
        (59, "59 minutes", "59 Minuten", "59 minutes"),
        (60, "1 hour", "1 Stunde", "1 heure"),
        (90, "1 hour 30 minutes", "1 Stunde 30 Minuten", "1 heure 30 minutes"),
        (120, "2 hours", "2 Stunden", "2 heures"),
        (121, "2 hours 1 minute", "2 Stunden 1 Minute", "2 heures 1 minute"),
        (720, "12 hours", "12 Stunden", "12 heures"),
        (1440, "1 day", "1 Tag", "1 jour"),
        (1500, "1 day 1 hour", "1 Tag 1 Stunde", "1 jour 1 heure"),
        (2880, "2 days", "2 Tage", "2 jours"),
        (43200, "30 days", "30 Tage", "30 jours"),
    ],
)
def test_human_duration(minutes: int, en: str, de: str, fr: str) -> None:
    assert human_duration(minutes, "en") == en
    assert human_duration(minutes, "de") == de
    assert human_duration(minutes, "fr") == fr


@pytest.mark.parametrize("locale", ["de-DE", "de_DE", "DE", "de-AT.UTF-8"])
def test_human_duration_normalises_locale(locale: str) -> None:
    assert human_duration(5, locale) == "5 Minuten"


def test_human_duration_unknown_locale_is_english() -> None:
    assert human_duration(60, "xx") == "1 hour"


def test_human_duration_accepts_digit_strings_and_rejects_junk() -> None:
    assert human_duration("15", "en") == "15 minutes"  # type: ignore[arg-type]
    for bad in (-1, "soon", None, True, float("nan")):
        with pytest.raises(ValueError):
            human_duration(bad, "en")  # type: ignore[arg-type]


# --- the bundles themselves ------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


@pytest.mark.parametrize("locale", ["de", "fr"])
def test_translations_are_complete_with_the_same_placeholders(locale: str) -> None:
    english, other = bundle("en"), bundle(locale)
    assert set(other) == set(english), set(other) ^ set(english)
    for key, text in english.items():
        assert set(PLACEHOLDER.findall(other[key])) == set(PLACEHOLDER.findall(text)), key
        assert other[key].strip(), key


def test_every_template_has_a_subject_and_both_bodies(renderer: TemplateRenderer) -> None:
    english = bundle("en")
    for template in TEMPLATE_NAMES:
        assert f"{template}.subject" in english
        assert renderer.exists(None, template)
        assert renderer.exists("acme", template)
    assert not renderer.exists(None, "no-such-template")
    assert not renderer.exists(None, "_layout")


def test_locales(renderer: TemplateRenderer) -> None:
    assert set(LOCALES) <= set(renderer.locales())
