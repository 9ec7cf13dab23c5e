"""The hint table of the Test Connection probe, without sockets: (stage, kind, settings) -> advice."""

from __future__ import annotations

from typing import Any

import pytest

from config.smtp import SmtpSettings, parse_smtp_settings
from worker.probe import (
    HINTS,
    hint_for,
)
from worker.smtp import Kind


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
        ("tls", Kind.TLS_HANDSHAKE, SSL_587, WRONG_VERSION, None, "Turn ssl off and starttls on"),
        ("tls", Kind.TLS_HANDSHAKE, SSL_25, "[SSL: RECORD_LAYER_FAILURE] record layer failure", None,
         "Turn ssl off and starttls on"),
        ("tls", Kind.TIMEOUT, SSL_587, "no answer within 10s (tls)", None, "the handshake got no answer"),
        # plaintext / StartTLS on an implicit-TLS port
        ("ehlo", Kind.NO_GREETING, STARTTLS_465, "", None, "port 465 expects implicit TLS"),
        ("ehlo", Kind.NO_GREETING, PLAIN_587, "", None, "turn ssl on"),
        # StartTLS on but not offered
        ("tls", Kind.NO_STARTTLS, STARTTLS_587, "", None, "does not offer STARTTLS"),
        # certificates
        ("tls", Kind.CERT_UNTRUSTED, STARTTLS_587, "self-signed certificate", None, "MAILWORKER_SMTP_CA_FILE"),
        ("tls", Kind.CERT_HOSTNAME, STARTTLS_587, "Hostname mismatch", None, "not for 'smtp.acme.example'"),
        ("tls", Kind.CERT_EXPIRED, SSL_465, "certificate has expired", None, "renew it"),
        ("tls", Kind.REPLY, STARTTLS_587, "454 TLS not available", 454, "refused it (454)"),
        ("tls", Kind.TLS_HANDSHAKE, SSL_465, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol", None,
         "old TLS versions"),
        # authentication
        ("auth", Kind.NO_AUTH, PLAIN_AUTH, "", None, "Turn on StartTLS"),
        ("auth", Kind.NO_AUTH, TLS_AUTH, "", None, "turn auth off"),
        ("auth", Kind.AUTH_MECHANISM, TLS_AUTH, "", None, "not a mechanism"),
        ("auth", Kind.REPLY, TLS_AUTH, "5.7.8 Username and Password not accepted", 535, "user name or password"),
        ("auth", Kind.REPLY, TLS_AUTH, "5.7.9 Application-specific password required", 534, "app password"),
        ("auth", Kind.REPLY, PLAIN_AUTH, "5.7.0 Must issue a STARTTLS command first", 530, "turn on StartTLS"),
        ("auth", Kind.TOKEN, TLS_AUTH, "", None, "oauth_token_url"),
        # network
        ("connect", Kind.REFUSED, PLAIN_587, "", None, "connection refused"),
        ("connect", Kind.TIMEOUT, PLAIN_587, "", None, "firewall"),
        ("resolve", Kind.TIMEOUT, PLAIN_587, "", None, "firewall"),
        ("resolve", Kind.DNS, PLAIN_587, "", None, "'smtp.acme.example' does not resolve"),
        ("connect", Kind.NETWORK, PLAIN_587, "Network is unreachable", None, "cannot reach"),
        ("ehlo", Kind.DEADLINE, PLAIN_587, "", None, "ran out of time"),
        ("auth", Kind.TIMEOUT, TLS_AUTH, "", None, "stopped answering"),
        ("auth", Kind.CLOSED, TLS_AUTH, "", None, "dropped the connection"),
        ("ehlo", Kind.REPLY, PLAIN_587, "554 no SMTP service here", 554, "refuses to talk to this worker"),
        ("ehlo", Kind.REPLY, PLAIN_587, "421 too busy", 421, "try again later"),
        # sending
        ("send", Kind.REPLY, PLAIN_587, "MAIL: 530 5.7.0 Authentication required", 530, "turn auth on"),
        ("send", Kind.REPLY, PLAIN_587, "RCPT: 550 5.7.1 Relaying denied", 550, "refused to relay"),
        ("send", Kind.REPLY, PLAIN_587, "MAIL: 553 5.7.1 Sender address rejected", 553, "refused the sender"),
        ("send", Kind.MESSAGE, PLAIN_587, "to: must be a plain e-mail address", None, "could not be built"),
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
        ("send", Kind.REPLY, 552),  # message too big: the reply says it all
        ("send", Kind.REPLY, 451),
    ],
)
def test_no_hint_when_the_error_says_it_all(stage: str, kind: str, code: int) -> None:
    assert hint_for(stage, kind, PLAIN_587, text="some reply", code=code) is None


def test_a_tls_handshake_failure_with_ssl_off_is_not_blamed_on_the_port() -> None:
    hint = hint_for("tls", Kind.TLS_HANDSHAKE, STARTTLS_587, text=WRONG_VERSION)
    assert hint is not None and "Turn ssl off" not in hint


def test_hints_never_show_a_password() -> None:
    secret = settings(port=25, auth=True, username="u", password="Sup3r-secret")
    for stage in ("resolve", "connect", "ehlo", "tls", "auth", "send"):
        for kind in (Kind.REPLY, Kind.TIMEOUT, Kind.NO_AUTH, Kind.CERT_HOSTNAME, Kind.REFUSED, Kind.DNS):
            assert "Sup3r-secret" not in (hint_for(stage, kind, secret, code=535) or "")


def test_every_row_has_a_reason() -> None:
    reasons = [why for why, _test, _hint in HINTS]
    assert all(reasons) and len(set(reasons)) == len(reasons)
