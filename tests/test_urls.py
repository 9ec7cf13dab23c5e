"""config/urls.py as tables: the rule for URLs from settings (https, a host, a valid port, no user info, no
loopback/private/link-local destination unless MAILWORKER_ALLOW_PRIVATE_URLS).

Every address in these tables is 127.0.0.1 in one spelling or another, or a name under .example (never
resolved here): the functions are pure, and the tests point nothing anywhere else.
"""

from __future__ import annotations

import ipaddress

import pytest

from config.errors import InvalidInput
from config.smtp import parse_smtp_settings
from config.urls import address_kind, check_public_url, check_resolved, literal_address, parse_url

FIELD = "oauth_token_url"


@pytest.mark.parametrize(
    "url, allow_private, words",
    [
        ("https://login.example/tenant/oauth2/v2.0/token", False, None),
        ("https://login.example:8443/token", False, None),
        ("HTTPS://Login.Example/token", False, None),
        ("https://login.example:99999/token", True, "has a port that is not a whole number from 1 to 65535"),
        ("https://login.example:0/token", True, "has a port that is not a whole number from 1 to 65535"),
        ("https://login.example:x/token", True, "has a port that is not a whole number from 1 to 65535"),
        ("https:///token", True, "has no host name"),
        ("https://:443/token", True, "has no host name"),
        ("ftp://login.example/token", True, "must be an https:// URL"),
        ("login.example/token", True, "must be an https:// URL"),
        ("https://login.example/to ken", True, "must not contain spaces or control characters"),
        ("https://login.example/\x1b[31m", True, "must not contain spaces or control characters"),
        ("https://[::1/token", True, "broken [IPv6] host"),
        ("https://user:pw@login.example/token", True, "must not contain a user name or password"),
        # plain http: only to this machine, and only with the private-URL setting
        ("http://login.example/token", True, "must be an https:// URL (http only for an endpoint on this machine"),
        ("http://127.0.0.1:8080/token", True, None),
        ("http://localhost:8080/token", True, None),
        ("http://127.0.0.1:8080/token", False, "host 127.0.0.1 is a loopback address: refused unless "
                                               "MAILWORKER_ALLOW_PRIVATE_URLS=1"),
        # loopback in any spelling, and loopback names, are refused without the setting
        ("https://127.0.0.1/token", False, "is a loopback address"),
        ("https://127.1/token", False, "is a loopback address"),
        ("https://2130706433/token", False, "is a loopback address"),
        ("https://0x7f.0.0.1/token", False, "is a loopback address"),
        ("https://[::ffff:127.0.0.1]/token", False, "is a loopback address"),
        ("https://localhost/token", False, "is a loopback address"),
        ("https://localhost./token", False, "is a loopback address"),
        ("https://auth.localhost/token", False, "is a loopback address"),
        ("https://127.0.0.1/token", True, None),
    ],
)  # fmt: skip
def test_check_public_url(url: str, allow_private: bool, words: str | None) -> None:
    if words is None:
        parsed = check_public_url(FIELD, url, allow_private=allow_private)
        assert parsed.port in (443, 8443, 8080)
        return
    with pytest.raises(InvalidInput) as caught:
        check_public_url(FIELD, url, allow_private=allow_private)
    [(field, rule)] = caught.value.problems
    assert field == FIELD and words in rule, rule


@pytest.mark.parametrize(
    "url, addresses, allow_private, words",
    [
        ("https://token.example/t", ["127.0.0.1"], False, "host token.example resolves to 127.0.0.1, which is a "
                                                          "loopback address"),
        ("https://token.example/t", ["::ffff:127.0.0.1"], False, "which is a loopback address"),
        ("https://token.example/t", ["127.0.0.1"], True, None),
        ("http://localhost:8080/t", ["127.0.0.1"], True, None),
        ("https://token.example/t", ["not-an-address"], True, "which is not an address"),
    ],
)  # fmt: skip
def test_check_resolved(url: str, addresses: list[str], allow_private: bool, words: str | None) -> None:
    if words is None:
        check_resolved(FIELD, url, addresses, allow_private=allow_private)
        return
    with pytest.raises(InvalidInput) as caught:
        check_resolved(FIELD, url, addresses, allow_private=allow_private)
    assert words in str(caught.value)


def test_address_kinds() -> None:
    assert address_kind(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert address_kind(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    assert literal_address("127.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("login.example") is None and literal_address("cafe") is None


def test_the_settings_model_checks_what_makes_a_url_callable() -> None:
    base = {"from": "noreply@acme.example", "host": "smtp.acme.example", "auth": True, "auth_type": "xoauth2",
            "username": "u", "oauth_client_id": "c", "oauth_client_secret": "s"}  # fmt: skip
    with pytest.raises(InvalidInput) as caught:
        parse_smtp_settings({**base, FIELD: "https://login.example:99999/token"})
    assert caught.value.problems == [(FIELD, "has a port that is not a whole number from 1 to 65535")]
    # Whether it may be called depends on the service's settings: checked at save and on use, not here.
    assert parse_smtp_settings({**base, FIELD: "http://127.0.0.1:8080/token"}).oauth_token_url
    assert parse_url(FIELD, "https://login.example/token").host == "login.example"
