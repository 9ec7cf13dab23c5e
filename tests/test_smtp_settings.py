"""Every rule of config/smtp.py, as tables: each broken rule must name its field (JSON name)."""

from __future__ import annotations

from typing import Any

import pytest

from config.crypto import MASK
from config.errors import InvalidInput
from config.smtp import (
    DEFAULT_DATA_TIMEOUT,
    LINE_SAFE_FIELDS,
    SECRET_FIELDS,
    SmtpSettings,
    parse_smtp_settings,
)

MINIMAL = {"from": "noreply@acme.example", "host": "smtp.acme.example"}
XOAUTH2 = {
    **MINIMAL,
    "auth": True,
    "auth_type": "xoauth2",
    "username": "bot@acme.example",
    "oauth_token_url": "https://login.example/token",
    "oauth_client_id": "client",
    "oauth_client_secret": "client-secret",
}
IAM = {"iam_url": "https://iam.acme.example", "iam_client_id": "mailer", "iam_client_secret": "iam-secret"}


def settings(**changes: Any) -> dict[str, Any]:
    data = {**MINIMAL, **changes}
    return {k: v for k, v in data.items() if v is not None}


def problem_fields(data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        parse_smtp_settings(data)
    return [field for field, _ in caught.value.problems]


def test_minimal_settings_get_the_defaults() -> None:
    parsed = parse_smtp_settings(MINIMAL)
    assert (parsed.port, parsed.ssl, parsed.starttls, parsed.auth, parsed.verify_tls) == (
        25,
        False,
        False,
        False,
        True,
    )
    assert parsed.envelope_sender == "noreply@acme.example"


@pytest.mark.parametrize(
    "data, field, words",
    [
        # required fields
        ({"host": "smtp.acme.example"}, "from", "is required"),
        ({"from": "noreply@acme.example"}, "host", "is required"),
        (settings(host=""), "host", "is required"),
        (settings(host="   "), "host", "is required"),
        # host must be a bare name
        (settings(host="smtp acme.example"), "host", "host name"),
        (settings(host="smtps://smtp.acme.example"), "host", "host name"),
        (settings(host="user@smtp.acme.example"), "host", "host name"),
        # TLS modes
        (settings(ssl=True, starttls=True), "ssl", "cannot both be on"),
        (settings(ssl="maybe"), "ssl", "boolean"),
        # auth
        (settings(auth=True, password="pw"), "username", "required when auth is on"),
        (settings(auth=True, username="bot"), "password", "required when auth is on"),
        (settings(auth=True, username="bot", password=""), "password", "required when auth is on"),
        (settings(auth_type="kerberos"), "auth_type", "password"),
        # port
        (settings(port=0), "port", "from 1 to 65535"),
        (settings(port=65536), "port", "from 1 to 65535"),
        (settings(port=-1), "port", "from 1 to 65535"),
        (settings(port="x"), "port", "from 1 to 65535"),
        (settings(port=1.5), "port", "whole number"),
        # addresses
        (settings(**{"from": "not-an-address"}), "from", "not a valid address"),
        (settings(**{"from": "a@"}), "from", "not a valid address"),
        (settings(reply_to="two@@acme.example"), "reply_to", "not a valid address"),
        (settings(envelope_from="bounce.acme.example"), "envelope_from", "not a valid address"),
        (settings(**{"from": "jörg@acme.example"}), "from", "allow_utf8"),
        (settings(reply_to_display_name="Support"), "reply_to", "required when reply_to_display_name"),
        # display names: printable only
        (settings(from_display_name="Acme\tSupport"), "from_display_name", "printable"),
        (
            settings(reply_to="help@acme.example", reply_to_display_name="Help\u2028Desk"),
            "reply_to_display_name",
            "printable",
        ),
        # lengths and ranges
        (settings(from_display_name="x" * 201), "from_display_name", "at most 200"),
        (settings(host="h" * 254), "host", "at most 253"),
        (settings(connect_timeout=0), "connect_timeout", "greater than 0"),
        (settings(timeout=301), "timeout", "less than or equal to 300"),
        (settings(data_timeout=0), "data_timeout", "greater than 0"),
        (settings(data_timeout=-1), "data_timeout", "greater than 0"),
        (settings(data_timeout=3601), "data_timeout", "less than or equal to 3600"),
        (settings(data_timeout="ten minutes"), "data_timeout", "valid number"),
        (settings(rate_limit_per_second=0), "rate_limit_per_second", "greater than 0"),
        (settings(rate_limit_per_hour=-5), "rate_limit_per_hour", "greater than 0"),
        # unknown fields are refused, not ignored
        (settings(hostname="smtp.acme.example"), "hostname", "unknown field"),
        (settings(password_encrypted="gAAAA"), "password_encrypted", "unknown field"),
    ],
)
def test_broken_rule_names_its_field(data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_smtp_settings(data)
    assert (field, True) in [(f, words in rule) for f, rule in caught.value.problems], caught.value.problems
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"from": "noreply@bücher.example"},  # IDN domain
        {"from": "noreply@xn--bcher-kva.example"},  # the same domain in punycode
        {"from": "jörg@acme.example", "allow_utf8": True},  # SMTPUTF8 local part, allowed on purpose
        {"from_display_name": "Jörg Müller — Acme 株式会社"},  # non-ASCII display names are fine
        {"reply_to": "help@acme.example", "reply_to_display_name": "Équipe d'aide"},
        {"envelope_from": "bounces@acme.example"},
        {"port": 65535},
        {"port": 1},
        {"port": "587"},
        {"ssl": True, "port": 465},
        {"starttls": True, "port": 587},
        {"auth": True, "username": "bot", "password": "pw"},
        {"verify_tls": False},
        {"rate_limit_per_second": 14, "rate_limit_per_hour": 50000},
        {"data_timeout": 0.5},
        {"data_timeout": 3600},
        {"data_timeout": "120"},
    ],
)
def test_valid_settings(changes: dict[str, Any]) -> None:
    parse_smtp_settings(settings(**changes))


def test_data_timeout_defaults_to_the_rfcs_ten_minutes_and_is_shown() -> None:
    parsed = parse_smtp_settings(MINIMAL)
    assert parsed.data_timeout == DEFAULT_DATA_TIMEOUT == 600
    assert parsed.timeout == 10  # the other commands keep their own, shorter deadline
    assert parsed.to_public()["data_timeout"] == 600
    assert parse_smtp_settings(settings(data_timeout=90)).to_public()["data_timeout"] == 90


@pytest.mark.parametrize("field", LINE_SAFE_FIELDS)
@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00"])
def test_cr_lf_nul_refused_in_every_line_safe_field(field: str, bad: str) -> None:
    data = {**XOAUTH2, field: f"x{bad}Bcc: victim@example.com"}
    problems = problem_fields(data)
    assert problems == [field]


def test_header_injection_message_says_why() -> None:
    with pytest.raises(InvalidInput, match="from: must not contain CR, LF or NUL"):
        parse_smtp_settings(settings(**{"from": "a@b.com\r\nBcc: x@y.com"}))


@pytest.mark.parametrize("missing", ["oauth_token_url", "oauth_client_id", "oauth_client_secret"])
def test_xoauth2_requires_its_fields(missing: str) -> None:
    data = {k: v for k, v in XOAUTH2.items() if k != missing}
    with pytest.raises(InvalidInput) as caught:
        parse_smtp_settings(data)
    assert caught.value.problems == [(missing, "is required when auth_type is xoauth2")]


def test_xoauth2_token_url_must_be_http() -> None:
    assert problem_fields({**XOAUTH2, "oauth_token_url": "ftp://login.example/token"}) == ["oauth_token_url"]


def test_xoauth2_complete_is_valid() -> None:
    parsed = parse_smtp_settings(XOAUTH2)
    assert parsed.secret("oauth_client_secret") == "client-secret"


def test_every_problem_is_reported_at_once() -> None:
    problems = problem_fields(settings(ssl=True, starttls=True, auth=True, reply_to_display_name="x"))
    assert set(problems) == {"ssl", "username", "password", "reply_to"}


def test_not_a_dict_is_refused() -> None:
    assert problem_fields(["from", "host"]) == ["settings"]  # type: ignore[arg-type]


def test_addresses_are_normalised() -> None:
    parsed = parse_smtp_settings(settings(**{"from": "noreply@ACME.example"}))
    assert parsed.from_address == "noreply@acme.example"


def test_notify_events_accepts_a_comma_list() -> None:
    parsed = parse_smtp_settings(settings(notify_events="login_error, update_password"))
    assert parsed.notify_events == ("LOGIN_ERROR", "UPDATE_PASSWORD")


def test_public_view_masks_secrets_and_plain_view_keeps_them() -> None:
    parsed = parse_smtp_settings({**XOAUTH2, **IAM, "password": "pw"})
    public = parsed.to_public()
    assert [public[name] for name in SECRET_FIELDS] == [MASK, MASK, MASK]
    assert "pw" not in repr(parsed) and "client-secret" not in str(public) and "iam-secret" not in str(public)
    assert "iam-secret" not in repr(parsed)
    assert parsed.to_plain()["password"] == "pw"
    assert parse_smtp_settings(MINIMAL).to_public()["password"] is None


def test_python_name_of_from_is_accepted_too() -> None:
    assert (
        SmtpSettings.model_validate({"from_address": "a@acme.example", "host": "h"}).from_address
        == "a@acme.example"
    )


def test_envelope_sender_prefers_the_bounce_address() -> None:
    parsed = parse_smtp_settings(settings(envelope_from="bounces@acme.example"))
    assert parsed.envelope_sender == "bounces@acme.example"


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"iam_url": "https://iam.acme.example"}, "iam_client_id"),
        ({"iam_client_id": "mailer", "iam_client_secret": "s"}, "iam_url"),
        ({"iam_url": "https://iam.acme.example", "iam_client_id": "mailer"}, "iam_client_secret"),
        ({**IAM, "iam_url": "ftp://iam.acme.example"}, "iam_url"),
        ({**IAM, "iam_url": "https://iam.acme.example/\r\nx"}, "iam_url"),
        ({**IAM, "iam_realm": "acme\x07"}, "iam_realm"),
        ({**IAM, "iam_client_id": "a\nb"}, "iam_client_id"),
    ],
)
def test_iam_lookup_fields_go_together_and_follow_their_rules(fields, problem) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        parse_smtp_settings({**MINIMAL, **fields})
    assert problem in [field for field, _ in excinfo.value.problems]


def test_iam_lookup_fields_are_optional_and_empty_is_unset() -> None:
    assert parse_smtp_settings({**MINIMAL, "iam_url": " ", "iam_realm": ""}).iam_url is None
    parsed = parse_smtp_settings({**MINIMAL, **IAM, "iam_realm": "master"})
    assert (parsed.iam_url, parsed.iam_realm, parsed.secret("iam_client_secret")) == (
        "https://iam.acme.example", "master", "iam-secret")  # fmt: skip
