"""The hint table of the Test Connection probe, without sockets: (stage, kind, settings) -> advice."""

from __future__ import annotations

from typing import Any

import pytest

from config.smtp import SmtpSettings, parse_smtp_settings
from worker.probe import (
    HINTS,
    KIND_AUTH_MECHANISM,
    KIND_CERT_EXPIRED,
    KIND_CERT_HOSTNAME,
    KIND_CERT_UNTRUSTED,
    KIND_CLOSED,
    KIND_DEADLINE,
    KIND_DNS,
    KIND_MESSAGE,
    KIND_NETWORK,
    KIND_NO_AUTH,
    KIND_NO_GREETING,
    KIND_NO_STARTTLS,
    KIND_REFUSED,
    KIND_REPLY,
    KIND_TIMEOUT,
    KIND_TLS_HANDSHAKE,
    KIND_TOKEN,
    hint_for,
)


def settings(**fields: Any) -> SmtpSettings:
    return parse_smtp_settings({"from": "noreply@acme.example", "host": "smtp.acme.example", **fields})


PLAIN_587 = settings(port=587)
STARTTLS_587 = settings(port=587, starttls=True)
SSL_587 = settings(port=587, ssl=True)
SSL_25 = settings(port=25, ssl=True)
SSL_465 = settings(port=465, ssl=True)
STARTTLS_465 = settings(port=465, starttls=True)
PLAIN_AUTH = settings(port=25, auth=True, username="u", password="p")
TLS_AUTH = settings(port=465, ssl=True, auth=True, username="u", password="p")

WRONG_VERSION = (
    "TLS handshake with smtp.acme.example:587 failed: [SSL: WRONG_VERSION_NUMBER] wrong version number"
)


@pytest.mark.parametrize(
    "stage, kind, config, text, code, expected",
    [
        # SSL on a port that starts in plaintext (587/25)
        ("tls", KIND_TLS_HANDSHAKE, SSL_587, WRONG_VERSION, None, "Turn ssl off and starttls on"),
        ("tls", KIND_TLS_HANDSHAKE, SSL_25, "[SSL: RECORD_LAYER_FAILURE] record layer failure", None,
         "Turn ssl off and starttls on"),
        ("tls", KIND_TIMEOUT, SSL_587, "no answer within 10s (tls)", None, "the handshake got no answer"),
        # plaintext / StartTLS on an implicit-TLS port
        ("ehlo", KIND_NO_GREETING, STARTTLS_465, "", None, "port 465 expects implicit TLS"),
        ("ehlo", KIND_NO_GREETING, PLAIN_587, "", None, "turn ssl on"),
        # StartTLS on but not offered
        ("tls", KIND_NO_STARTTLS, STARTTLS_587, "", None, "does not offer STARTTLS"),
        # certificates
        ("tls", KIND_CERT_UNTRUSTED, STARTTLS_587, "self-signed certificate", None, "MAILWORKER_SMTP_CA_FILE"),
        ("tls", KIND_CERT_HOSTNAME, STARTTLS_587, "Hostname mismatch", None, "not for 'smtp.acme.example'"),
        ("tls", KIND_CERT_EXPIRED, SSL_465, "certificate has expired", None, "renew it"),
        ("tls", KIND_REPLY, STARTTLS_587, "454 TLS not available", 454, "refused it (454)"),
        ("tls", KIND_TLS_HANDSHAKE, SSL_465, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol", None,
         "old TLS versions"),
        # authentication
        ("auth", KIND_NO_AUTH, PLAIN_AUTH, "", None, "Turn on StartTLS"),
        ("auth", KIND_NO_AUTH, TLS_AUTH, "", None, "turn auth off"),
        ("auth", KIND_AUTH_MECHANISM, TLS_AUTH, "", None, "not a mechanism"),
        ("auth", KIND_REPLY, TLS_AUTH, "5.7.8 Username and Password not accepted", 535, "user name or password"),
        ("auth", KIND_REPLY, TLS_AUTH, "5.7.9 Application-specific password required", 534, "app password"),
        ("auth", KIND_REPLY, PLAIN_AUTH, "5.7.0 Must issue a STARTTLS command first", 530, "turn on StartTLS"),
        ("auth", KIND_TOKEN, TLS_AUTH, "", None, "oauth_token_url"),
        # network
        ("connect", KIND_REFUSED, PLAIN_587, "", None, "connection refused"),
        ("connect", KIND_TIMEOUT, PLAIN_587, "", None, "firewall"),
        ("resolve", KIND_TIMEOUT, PLAIN_587, "", None, "firewall"),
        ("resolve", KIND_DNS, PLAIN_587, "", None, "'smtp.acme.example' does not resolve"),
        ("connect", KIND_NETWORK, PLAIN_587, "Network is unreachable", None, "cannot reach"),
        ("ehlo", KIND_DEADLINE, PLAIN_587, "", None, "ran out of time"),
        ("auth", KIND_TIMEOUT, TLS_AUTH, "", None, "stopped answering"),
        ("auth", KIND_CLOSED, TLS_AUTH, "", None, "dropped the connection"),
        ("ehlo", KIND_REPLY, PLAIN_587, "554 no SMTP service here", 554, "refuses to talk to this worker"),
        ("ehlo", KIND_REPLY, PLAIN_587, "421 too busy", 421, "try again later"),
        # sending
        ("send", KIND_REPLY, PLAIN_587, "MAIL: 530 5.7.0 Authentication required", 530, "turn auth on"),
        ("send", KIND_REPLY, PLAIN_587, "RCPT: 550 5.7.1 Relaying denied", 550, "refused to relay"),
        ("send", KIND_REPLY, PLAIN_587, "MAIL: 553 5.7.1 Sender address rejected", 553, "refused the sender"),
        ("send", KIND_MESSAGE, PLAIN_587, "to: must be a plain e-mail address", None, "could not be built"),
    ],
)  # fmt: skip
def test_hint_table(
    stage: str, kind: str, config: SmtpSettings, text: str, code: int | None, expected: str
) -> None:
    hint = hint_for(stage, kind, config, text=text, code=code)
    assert hint is not None
    assert expected in hint


@pytest.mark.parametrize(
    "stage, kind, code",
    [
        ("send", KIND_REPLY, 552),  # message too big: the reply says it all
        ("send", KIND_REPLY, 451),
    ],
)
def test_no_hint_when_the_error_says_it_all(stage: str, kind: str, code: int) -> None:
    assert hint_for(stage, kind, PLAIN_587, text="some reply", code=code) is None


def test_a_tls_handshake_failure_with_ssl_off_is_not_blamed_on_the_port() -> None:
    hint = hint_for("tls", KIND_TLS_HANDSHAKE, STARTTLS_587, text=WRONG_VERSION)
    assert hint is not None and "Turn ssl off" not in hint


def test_hints_never_show_a_password() -> None:
    secret = settings(port=25, auth=True, username="u", password="Sup3r-secret")
    for stage in ("resolve", "connect", "ehlo", "tls", "auth", "send"):
        for kind in (KIND_REPLY, KIND_TIMEOUT, KIND_NO_AUTH, KIND_CERT_HOSTNAME, KIND_REFUSED, KIND_DNS):
            assert "Sup3r-secret" not in (hint_for(stage, kind, secret, code=535) or "")


def test_every_row_has_a_reason() -> None:
    reasons = [why for why, _test, _hint in HINTS]
    assert all(reasons) and len(set(reasons)) == len(reasons)
