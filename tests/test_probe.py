"""The Test Connection probe against real servers on loopback: each usual mistake, made for real."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from config.smtp import SmtpSettings, parse_smtp_settings
from tests.support.smtp_server import SmtpTestServer, blackhole_listener, closed_port
from worker.content.message import build_message
from worker.content.render import RenderedEmail
from worker.probe import (
    ProbeStatus,
    default_deadline,
    probe_smtp,
)
from worker.smtp import Kind

PASSWORD = "pr0be-Secret-pw"
TOKEN = "ya29.probe-token-value"
USER = "alice@example.com"


@pytest.fixture(scope="module")
def starttls_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="starttls", require_auth=(USER, PASSWORD)) as server:
        yield server


@pytest.fixture(scope="module")
def implicit_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="implicit", require_auth=(USER, PASSWORD)) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="none") as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_recordings(request: pytest.FixtureRequest) -> None:
    for name in ("starttls_server", "implicit_server", "plain_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


def probe(settings: SmtpSettings, **kwargs: Any) -> ProbeStatus:
    """probe_smtp, checking on every status that no credential made it into the JSON."""
    status = probe_smtp(settings, **kwargs)
    text = json.dumps(status.to_dict())
    assert PASSWORD not in text
    assert TOKEN not in text
    assert "wrong-" + PASSWORD not in text
    return status


def refuse_to_resolve(host: str, *args: Any, **kwargs: Any) -> Any:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def names(status: ProbeStatus) -> list[str]:
    return [stage.name for stage in status.stages]


def short(settings: SmtpSettings) -> SmtpSettings:
    return settings.model_copy(update={"connect_timeout": 1.0, "timeout": 1.0})


# ---- correct configurations -----------------------------------------------------------------------------


def test_starttls_with_auth_every_stage_ok(starttls_server: SmtpTestServer) -> None:
    status = probe(starttls_server.settings(), ca_file=starttls_server.ca_file)

    assert status.ok, status.to_dict()
    assert names(status) == ["resolve", "connect", "ehlo", "tls", "auth"]
    assert all(stage.ok for stage in status.stages)
    assert all(stage.ms >= 0 for stage in status.stages)
    data = status.to_dict()
    assert data["mode"] == "starttls"
    assert data["failed_stage"] is None and data["hint"] is None
    ehlo, tls, auth = status.stages[2], status.stages[3], status.stages[4]
    assert ehlo.info["banner"].startswith("smtp.test.local")
    assert "starttls" in ehlo.info["extensions"]
    assert "auth" not in ehlo.info["extensions"]  # offered only after TLS
    assert tls.info["protocol"].startswith("TLSv1.")
    assert tls.info["cipher"]
    assert "trustme" in tls.info["subject"] and "Testing CA" in tls.info["issuer"]
    assert tls.info["not_after"] and "127.0.0.1" in tls.info["names"]
    assert "after TLS" in tls.detail and "AUTH" in tls.detail
    assert auth.info["mechanism"] in ("PLAIN", "LOGIN")
    assert status.extensions["auth"]  # the EHLO after TLS
    assert data["smtp_code"] == 235


def test_implicit_tls_handshake_comes_before_the_greeting(implicit_server: SmtpTestServer) -> None:
    status = probe(implicit_server.settings(), ca_file=implicit_server.ca_file)

    assert status.ok, status.to_dict()
    assert status.mode == "ssl"
    assert names(status) == ["resolve", "connect", "tls", "ehlo", "auth"]
    assert "AUTH" in status.stages[3].detail


def test_plain_without_auth(plain_server: SmtpTestServer) -> None:
    status = probe(plain_server.settings())

    assert status.ok and status.mode == "plain"
    assert names(status) == ["resolve", "connect", "ehlo"]
    assert "8BITMIME" in status.stages[2].detail and "SIZE" in status.stages[2].detail


def test_verify_tls_off_is_reported_as_a_warning(starttls_server: SmtpTestServer) -> None:
    status = probe(starttls_server.settings(verify_tls=False))  # no ca_file: would be untrusted

    assert status.ok
    tls = status.stages[3]
    assert tls.info["verified"] is False
    assert "WARNING" in tls.detail and "NOT checked" in tls.detail


def test_send_to_delivers_a_real_message(starttls_server: SmtpTestServer) -> None:
    settings = starttls_server.settings(from_display_name="ACME IAM")
    rendered = RenderedEmail("Test message from acme", "It works.\n", "<p>It works.</p>\n")
    message = build_message(settings, rendered, "admin@example.org")

    status = probe(settings, ca_file=starttls_server.ca_file, send=lambda: message)

    assert status.ok, status.to_dict()
    assert names(status)[-1] == "send"
    assert status.smtp_code == 250 and "queued" in (status.smtp_reply or "")
    assert status.message_id == message.message_id
    (received,) = starttls_server.received_for("admin@example.org")
    assert received.tls and received.auth is not None and received.auth.login == USER
    parsed = received.message
    assert parsed["Subject"] == "Test message from acme"
    assert parsed["Message-ID"] == message.message_id
    assert parsed["From"].addresses[0].display_name == "ACME IAM"
    assert parsed.get_body(("plain",)).get_content().strip() == "It works."  # type: ignore[union-attr]


def test_send_refused_recipient_reports_the_reply(plain_server: SmtpTestServer) -> None:
    settings = plain_server.settings()
    plain_server.reject_recipient("nobody@example.org", "550 5.7.1 relaying denied")
    message = build_message(settings, RenderedEmail("s", "t", "<p>t</p>"), "nobody@example.org")

    status = probe(settings, send=message)

    assert not status.ok and status.failed_stage == "send"
    assert status.smtp_code == 550 and "relaying denied" in (status.smtp_reply or "")
    assert "relay" in (status.hint or "")


# ---- the usual mistakes, made for real ------------------------------------------------------------------


def test_ssl_on_a_starttls_port(starttls_server: SmtpTestServer) -> None:
    settings = short(starttls_server.settings(ssl=True, starttls=False))

    status = probe(settings, ca_file=starttls_server.ca_file)

    assert status.failed_stage == "tls" and status.kind == Kind.TLS_HANDSHAKE
    assert names(status) == ["resolve", "connect", "tls"]
    assert "wrong version number" in (status.error or "").lower()
    assert "Turn ssl off and starttls on" in (status.hint or "")


def test_starttls_on_an_implicit_tls_port(implicit_server: SmtpTestServer) -> None:
    settings = short(implicit_server.settings(ssl=False, starttls=True))

    started = time.monotonic()
    status = probe(settings, ca_file=implicit_server.ca_file)

    assert time.monotonic() - started < 3
    assert status.failed_stage == "ehlo" and status.kind == Kind.NO_GREETING
    assert "no SMTP greeting" in (status.error or "")
    assert "turn ssl on" in (status.hint or "")


def test_starttls_on_but_not_offered(plain_server: SmtpTestServer) -> None:
    status = probe(plain_server.settings(starttls=True))

    assert status.failed_stage == "tls" and status.kind == Kind.NO_STARTTLS
    assert "does not offer STARTTLS" in (status.hint or "")
    assert plain_server.verbs() == ["EHLO", "QUIT"]  # nothing in plaintext after the EHLO


def test_starttls_stripped_from_ehlo() -> None:
    with SmtpTestServer(tls="starttls", offer_starttls=False) as server:
        status = probe(server.settings(), ca_file=server.ca_file)
    assert status.kind == Kind.NO_STARTTLS


def test_untrusted_certificate(starttls_server: SmtpTestServer) -> None:
    status = probe(starttls_server.settings())  # the test CA is not in the system store

    assert status.failed_stage == "tls" and status.kind == Kind.CERT_UNTRUSTED
    assert "certificate verify failed" in (status.error or "")
    assert "Testing CA" in (status.error or "")  # whose certificate it is, from a second look
    assert "MAILWORKER_SMTP_CA_FILE" in (status.hint or "")


def test_certificate_for_another_host_name() -> None:
    with SmtpTestServer(tls="implicit", cert_hosts=("mail.other.invalid",)) as server:
        status = probe(server.settings(), ca_file=server.ca_file)

    assert status.failed_stage == "tls" and status.kind == Kind.CERT_HOSTNAME
    assert "mail.other.invalid" in (status.error or "")
    assert status.stages[-1].info["certificate"]["names"] == ["mail.other.invalid"]
    assert "not for '127.0.0.1'" in (status.hint or "")


def test_wrong_password_535(starttls_server: SmtpTestServer) -> None:
    settings = starttls_server.settings(password="wrong-" + PASSWORD)

    status = probe(settings, ca_file=starttls_server.ca_file)

    assert status.failed_stage == "auth" and status.kind == Kind.REPLY
    assert status.smtp_code == 535
    assert "user name or password" in (status.hint or "")
    assert status.elapsed_ms < 3000


def test_auth_not_offered_without_tls(starttls_server: SmtpTestServer) -> None:
    status = probe(starttls_server.settings(starttls=False))

    assert status.failed_stage == "auth" and status.kind == Kind.NO_AUTH
    assert "unencrypted" in (status.error or "")
    assert "Turn on StartTLS" in (status.hint or "")


def test_connection_refused() -> None:
    settings = parse_smtp_settings({"from": "a@example.com", "host": "127.0.0.1", "port": closed_port()})

    status = probe(settings)

    assert status.failed_stage == "connect" and status.kind == Kind.REFUSED
    assert "connection refused" in (status.hint or "")


def test_listener_that_never_answers_times_out_within_the_limits() -> None:
    with blackhole_listener() as port:
        settings = parse_smtp_settings({"from": "a@example.com", "host": "127.0.0.1", "port": port,
                                        "connect_timeout": 1, "timeout": 1})  # fmt: skip
        started = time.monotonic()
        plain = probe(settings)
        ssl_status = probe(settings.model_copy(update={"ssl": True}))
        elapsed = time.monotonic() - started

    assert elapsed < 4
    assert plain.failed_stage == "ehlo" and plain.kind == Kind.NO_GREETING
    assert ssl_status.failed_stage == "tls" and ssl_status.kind == Kind.TIMEOUT
    assert "Turn ssl off" in (ssl_status.hint or "")


def test_the_overall_limit_ends_the_probe() -> None:
    with blackhole_listener() as port:
        settings = parse_smtp_settings({"from": "a@example.com", "host": "127.0.0.1", "port": port,
                                        "connect_timeout": 30, "timeout": 30})  # fmt: skip
        started = time.monotonic()
        status = probe(settings, deadline_s=1.0)
        elapsed = time.monotonic() - started

    assert elapsed < 2
    assert status.kind == Kind.DEADLINE and status.deadline_s == 1.0
    assert "ran out of time" in (status.hint or "")


def test_connect_timeout() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, as a firewall would.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))
        try:
            settings = parse_smtp_settings({"from": "a@example.com", "host": "127.0.0.1", "port": port,
                                            "connect_timeout": 0.5, "timeout": 1})  # fmt: skip
            started = time.monotonic()
            status = probe(settings)
            elapsed = time.monotonic() - started
        finally:
            filler.close()

    assert elapsed < 2
    assert status.failed_stage == "connect" and status.kind == Kind.TIMEOUT
    assert "firewall" in (status.hint or "")


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The name's look-up fails here, on this machine: a real query would leave it (the resolver is remote).
    monkeypatch.setattr(socket, "getaddrinfo", refuse_to_resolve)
    settings = parse_smtp_settings({"from": "a@example.com", "host": "nonexistent.invalid", "port": 587})

    status = probe(settings)

    assert status.failed_stage == "resolve" and status.kind == Kind.DNS
    assert names(status) == ["resolve"]
    assert "does not resolve" in (status.hint or "")


# ---- XOAUTH2 --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oauth_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="implicit", xoauth2=(USER, TOKEN)) as server:
        yield server


def oauth_settings(server: SmtpTestServer) -> SmtpSettings:
    return server.settings(
        auth=True, auth_type="xoauth2", username=USER, oauth_token_url="https://login.example.com/token",
        oauth_client_id="client", oauth_client_secret="client-" + PASSWORD,
    )  # fmt: skip


def test_xoauth2_without_a_token_provider_is_not_tested(oauth_server: SmtpTestServer) -> None:
    status = probe(oauth_settings(oauth_server), ca_file=oauth_server.ca_file)

    assert status.ok
    assert status.stages[-1].name == "auth" and status.stages[-1].ok is None
    assert status.to_dict()["not_tested"] == ["auth"]
    assert "not tested" in status.stages[-1].detail


def test_xoauth2_with_a_token(oauth_server: SmtpTestServer) -> None:
    status = probe(
        oauth_settings(oauth_server), ca_file=oauth_server.ca_file, oauth_token_provider=lambda s: TOKEN
    )

    assert status.ok, status.to_dict()
    assert status.stages[-1].info["mechanism"] == "XOAUTH2"


def test_xoauth2_rejected_token(oauth_server: SmtpTestServer) -> None:
    status = probe(
        oauth_settings(oauth_server), ca_file=oauth_server.ca_file, oauth_token_provider=lambda s: "expired"
    )

    assert status.failed_stage == "auth" and status.smtp_code == 535


def test_default_deadline() -> None:
    base = {"from": "a@example.com", "host": "smtp.example.com"}
    assert default_deadline(parse_smtp_settings({**base, "connect_timeout": 5, "timeout": 5})) == 30
    assert default_deadline(parse_smtp_settings({**base, "connect_timeout": 30, "timeout": 30})) == 60


def test_a_non_ascii_password_logs_in_as_delivery_does():
    with SmtpTestServer(tls="starttls", require_auth=("bot", "pässwörd-€")) as server:
        status = probe_smtp(server.settings(), ca_file=server.ca_file)
        assert status.ok, status.to_dict()
        auth = next(stage for stage in status.stages if stage.name == "auth")
        assert auth.ok and "PLAIN" in auth.detail
        assert "pässwörd" not in json.dumps(status.to_dict())
