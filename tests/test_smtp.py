"""The SMTP transport against a real server on loopback (aiosmtpd): TLS, AUTH, failures, reuse."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from config.smtp import SmtpSettings, parse_smtp_settings
from tests.support.smtp_server import (
    SmtpTestServer,
    blackhole_listener,
    closed_port,
    silent_after_greeting,
    smtp_server_fixture,
)
from worker.content.message import OutgoingMessage, build_message
from worker.content.render import RenderedEmail
from worker.policy import Outcome, classify, counts_against
from worker.smtp import (
    Kind,
    SendResult,
    SessionPool,
    SmtpFailure,
    open_session,
)
from worker.smtp.wire import dot_stuffed

RENDERED = RenderedEmail("Passwort zurücksetzen", "Hallo,\nhier ist der Link.\n", "<p>Hallo</p>")
PASSWORD = "s3cret-Pässword"


@pytest.fixture
def server() -> Iterator[SmtpTestServer]:
    yield from smtp_server_fixture()


def message(settings: SmtpSettings, to: str = "alice@example.com", **kwargs: Any) -> OutgoingMessage:
    return build_message(settings, RENDERED, to, **kwargs)


def failure_of(settings: SmtpSettings, **kwargs: Any) -> SmtpFailure:
    with pytest.raises(SmtpFailure) as caught:
        open_session(settings, **kwargs)
    return caught.value


# ---- delivery over each transport ------------------------------------------------------------------------


def test_plain_delivery(server: SmtpTestServer) -> None:
    settings = server.settings(envelope_from="bounces@example.com")
    with open_session(settings) as session:
        result = session.send(message(settings))
        assert "size" in session.features
    assert result.code == 250 and result.accepted == ("alice@example.com",) and result.refused == {}
    (received,) = server.received_for("alice@example.com")
    assert received.mail_from == "bounces@example.com"
    assert received.message["Subject"] == "Passwort zurücksetzen"
    assert received.tls is False
    assert server.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_implicit_tls_with_the_test_ca() -> None:
    with SmtpTestServer(tls="implicit") as server:
        settings = server.settings()
        with open_session(settings, ca_file=server.ca_file) as session:
            session.send(message(settings))
        assert server.wait_for(1)[0].tls is True


def test_starttls_upgrades_before_anything_else() -> None:
    with SmtpTestServer(tls="starttls", require_auth=("mailer", PASSWORD)) as server:
        settings = server.settings()
        with open_session(settings, ca_file=server.ca_file) as session:
            session.send(message(settings))
        received = server.wait_for(1)[0]
        assert received.tls is True
        assert received.auth is not None and received.auth.login == "mailer"
        assert server.verbs()[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]


@pytest.mark.parametrize("tls", ["starttls", "none"])
def test_starttls_stripped_server_gets_no_auth_and_no_mail(tls: str) -> None:
    # The worst case: the server would even take AUTH in plaintext. We must not offer it the password.
    options: dict[str, Any] = {"tls": tls, "require_auth": ("mailer", PASSWORD), "auth_require_tls": False}
    with SmtpTestServer(offer_starttls=False, **options) as server:
        settings = server.settings(starttls=True)
        error = failure_of(settings, ca_file=server.ca_file)
        assert error.stage == "tls" and error.code is None
        assert (
            error.text
            == f"StartTLS is on but {settings.host}:{settings.port} did not offer STARTTLS; not continuing in plaintext"
        )
        assert classify(error) is Outcome.SETTINGS
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
        assert server.auth_attempts == [] and server.messages == []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_untrusted_certificate_is_refused(tls: str) -> None:
    with SmtpTestServer(tls=tls, require_auth=("mailer", PASSWORD)) as server:
        error = failure_of(server.settings())  # no ca_file: the system store does not know the test CA
        assert error.stage == "tls"
        assert "certificate verify failed" in error.text
        assert classify(error) is Outcome.SETTINGS
        assert server.auth_attempts == [] and server.messages == []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_certificate_for_another_host_name_is_refused(tls: str) -> None:
    with SmtpTestServer(tls=tls, cert_hosts=("wrong.example.invalid",)) as server:
        error = failure_of(server.settings(), ca_file=server.ca_file)
        assert error.stage == "tls"
        assert "certificate verify failed" in error.text and "mismatch" in error.text
        assert classify(error) is Outcome.SETTINGS


def test_verify_tls_off_connects_and_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with SmtpTestServer(tls="implicit", cert_hosts=("wrong.example.invalid",)) as server:
        settings = server.settings(verify_tls=False)
        with (
            caplog.at_level(logging.WARNING, logger="worker.smtp.connect"),
            open_session(settings) as session,
        ):
            session.send(message(settings))
        assert server.wait_for(1)
    warnings = [r for r in caplog.records if r.name == "worker.smtp.connect" and r.levelno == logging.WARNING]
    assert warnings and "verify_tls=false" in warnings[0].getMessage()


def test_ssl_on_against_a_plaintext_port_is_a_settings_problem(server: SmtpTestServer) -> None:
    error = failure_of(server.settings(ssl=True))
    assert error.stage == "tls" and "TLS handshake" in error.text
    assert classify(error) is Outcome.SETTINGS


# ---- authentication --------------------------------------------------------------------------------------


def test_auth_with_the_right_password_delivers() -> None:
    with SmtpTestServer(tls="implicit", require_auth=("mailer", PASSWORD)) as server:
        settings = server.settings()
        with open_session(settings, ca_file=server.ca_file) as session:
            session.send(message(settings))
        assert server.wait_for(1)[0].auth == server.auth_attempts[0]
        assert server.auth_attempts[0].secret == PASSWORD


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_non_ascii_password_over_each_mechanism(mechanism: str) -> None:
    other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
    with SmtpTestServer(tls="implicit", require_auth=("mailer", PASSWORD), auth_exclude=(other,)) as server:
        settings = server.settings()
        with open_session(settings, ca_file=server.ca_file) as session:
            session.send(message(settings))
        assert server.auth_attempts[0].mechanism == mechanism
        assert server.auth_attempts[0].secret == PASSWORD


def test_wrong_password_is_535_a_settings_problem_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    with SmtpTestServer(tls="implicit", require_auth=("mailer", "the-right-one")) as server:
        settings = server.settings(password=PASSWORD)
        with caplog.at_level(logging.DEBUG):
            error = failure_of(settings, ca_file=server.ca_file)
        assert (error.stage, error.code) == ("auth", 535)
        assert classify(error) is Outcome.SETTINGS
        assert PASSWORD not in str(error) and PASSWORD not in repr(error.args)
        assert PASSWORD not in caplog.text
        assert server.messages == []


def test_auth_without_tls_when_the_server_offers_auth_only_after_tls(server: SmtpTestServer) -> None:
    error = failure_of(server.settings(auth=True, username="mailer", password=PASSWORD))
    assert error.stage == "auth" and "offers no AUTH" in error.text and "TLS" in error.text
    assert classify(error) is Outcome.SETTINGS


def xoauth2_settings(server: SmtpTestServer) -> SmtpSettings:
    return server.settings(
        auth=True,
        auth_type="xoauth2",
        username="mailer@example.com",
        oauth_token_url="https://login.example.com/token",
        oauth_client_id="client",
        oauth_client_secret="client-secret",
    )


def test_xoauth2_with_the_right_token_delivers() -> None:
    with SmtpTestServer(tls="starttls", xoauth2=("mailer@example.com", "tok-123")) as server:
        settings = xoauth2_settings(server)
        with open_session(settings, ca_file=server.ca_file, oauth_token="tok-123") as session:
            session.send(message(settings))
        received = server.wait_for(1)[0]
        assert received.auth is not None and received.auth.mechanism == "XOAUTH2"


def test_xoauth2_with_a_wrong_token_is_a_settings_problem() -> None:
    with SmtpTestServer(tls="starttls", xoauth2=("mailer@example.com", "tok-123")) as server:
        error = failure_of(xoauth2_settings(server), ca_file=server.ca_file, oauth_token="expired-token")
        assert (error.stage, error.code) == ("auth", 535)
        assert "expired-token" not in str(error)
        assert classify(error) is Outcome.SETTINGS


# ---- replies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("at", ["mail", "rcpt", "data"])
def test_451_then_success_on_the_same_session(server: SmtpTestServer, at: str) -> None:
    server.fail_next("451 4.3.0 try again", times=1, at=at)
    settings = server.settings()
    with open_session(settings) as session:
        with pytest.raises(SmtpFailure) as caught:
            session.send(message(settings))
        assert (caught.value.code, caught.value.stage) == (451, at)
        assert classify(caught.value) is Outcome.RETRY
        assert session.check()
        assert session.send(message(settings)).code == 250
    assert len(server.wait_for(1)) == 1


def test_550_for_the_only_recipient_is_permanent(server: SmtpTestServer) -> None:
    server.reject_recipient("ghost@example.com")
    settings = server.settings()
    with open_session(settings) as session, pytest.raises(SmtpFailure) as caught:
        session.send(message(settings, "ghost@example.com"))
    error = caught.value
    assert (error.code, error.stage, error.recipient) == (550, "rcpt", "ghost@example.com")
    assert "no such user" in error.text
    assert classify(error) is Outcome.PERMANENT
    assert server.messages == []


def test_one_of_two_recipients_refused_is_reported_per_recipient(server: SmtpTestServer) -> None:
    server.reject_recipient("ghost@example.com", "550 5.1.1 ghost unknown")
    settings = server.settings()
    two = dataclasses.replace(message(settings), recipients=("alice@example.com", "ghost@example.com"))
    with open_session(settings) as session:
        result = session.send(two)
    assert result.accepted == ("alice@example.com",)
    assert result.refused == {"ghost@example.com": (550, "5.1.1 ghost unknown")}
    assert server.received_for("alice@example.com") and not server.received_for("ghost@example.com")


def test_all_recipients_refused_prefers_the_temporary_code(server: SmtpTestServer) -> None:
    server.reject_recipient("ghost@example.com")
    server.reject_recipient("busy@example.com", "452 4.2.2 mailbox full")
    settings = server.settings()
    two = dataclasses.replace(message(settings), recipients=("ghost@example.com", "busy@example.com"))
    with open_session(settings) as session, pytest.raises(SmtpFailure) as caught:
        session.send(two)
    assert (caught.value.code, caught.value.stage) == (452, "rcpt")
    assert "ghost@example.com: 550" in caught.value.text


def test_utf8_address_needs_the_servers_smtputf8() -> None:
    with SmtpTestServer(smtputf8=False) as server:
        settings = server.settings(allow_utf8=True)
        with open_session(settings) as session, pytest.raises(SmtpFailure) as caught:
            session.send(message(settings, "jürgen@example.com"))
        assert caught.value.kind == Kind.SMTPUTF8 and "jürgen@example.com" in caught.value.text
        assert caught.value.recipient == "jürgen@example.com"
        assert classify(caught.value) is Outcome.PERMANENT
        assert "MAIL" not in server.verbs()


def test_utf8_address_with_smtputf8_delivers() -> None:
    with SmtpTestServer(smtputf8=True) as server:
        settings = server.settings(allow_utf8=True)
        with open_session(settings) as session:
            session.send(message(settings, "jürgen@example.com"))
        received = server.wait_for(1)[0]
        assert received.recipients == ["jürgen@example.com"]
        assert "SMTPUTF8" in received.mail_options


# ---- connection failures -------------------------------------------------------------------------------


def test_connect_timeout_against_a_blackhole() -> None:
    with blackhole_listener() as port:
        settings = parse_smtp_settings(
            {"from": "noreply@example.com", "host": "127.0.0.1", "port": port, "connect_timeout": 0.5}
        )
        started = time.monotonic()
        error = failure_of(settings)
        elapsed = time.monotonic() - started
    assert elapsed < 3
    # The port accepts and never greets: what Test Connection calls it too (and the breaker counts it).
    assert error.kind == Kind.NO_GREETING and error.stage == "ehlo" and "within 0.5s" in error.text
    assert classify(error) is Outcome.RETRY and counts_against(error)


def test_command_timeout_when_the_server_stops_answering() -> None:
    with silent_after_greeting() as port:
        settings = parse_smtp_settings(
            {
                "from": "noreply@example.com",
                "host": "127.0.0.1",
                "port": port,
                "connect_timeout": 5,
                "timeout": 0.5,
            }
        )
        started = time.monotonic()
        error = failure_of(settings)
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert error.kind == Kind.TIMEOUT and error.stage == "ehlo" and "within 0.5s" in error.text
    assert classify(error) is Outcome.RETRY


def test_closed_port_is_connection_refused_and_retried() -> None:
    port = closed_port()
    error = failure_of(
        parse_smtp_settings({"from": "noreply@example.com", "host": "127.0.0.1", "port": port})
    )
    assert error.text == f"connection refused by 127.0.0.1:{port}"
    assert error.stage == "connect"
    assert classify(error) is Outcome.RETRY


def test_server_closing_before_the_greeting_is_retried(server: SmtpTestServer) -> None:
    server.drop_next_connection()
    error = failure_of(server.settings())
    assert error.code is None and classify(error) is Outcome.RETRY
    with open_session(server.settings()) as session:  # the next connection is fine
        assert session.check()


def test_check_is_false_once_the_server_is_gone() -> None:
    server = SmtpTestServer().start()
    session = open_session(server.settings())
    assert session.check()
    server.stop()
    assert not session.check()
    session.close()  # no error


# ---- the pool ------------------------------------------------------------------------------------------


def test_pool_reuses_the_session_for_the_same_version(server: SmtpTestServer, realm: str) -> None:
    pool = SessionPool()
    settings = server.settings()
    first = pool.session(realm, 1, settings)
    first.send(message(settings))
    again = pool.session(realm, 1, settings)
    assert again is first and again.messages_sent == 1
    again.send(message(settings))
    assert server.connections == 1
    pool.close_all()
    assert first.closed


def test_pool_reconnects_after_the_server_drops_after_n_messages(server: SmtpTestServer, realm: str) -> None:
    server.drop_after(2)
    pool = SessionPool()
    settings = server.settings()
    first = pool.session(realm, 1, settings)
    first.send(message(settings))
    first.send(message(settings))
    second = pool.session(realm, 1, settings)  # NOOP finds the connection closed: a new one
    assert second is not first
    second.send(message(settings))
    assert len(server.wait_for(3)) == 3 and server.connections == 2
    pool.close_all()


def test_pool_send_retries_once_on_a_fresh_session_after_421(server: SmtpTestServer, realm: str) -> None:
    server.drop_after(1, reply="421 4.7.0 too many messages in this session")
    pool = SessionPool()
    settings = server.settings()
    pool.send(realm, 1, settings, message(settings))
    # The pooled session's NOOP gets the 421 and the pool opens a new session.
    pool.send(realm, 1, settings, message(settings))
    assert len(server.wait_for(2)) == 2 and server.connections == 2
    pool.close_all()


def test_pool_max_messages_reopens_proactively(server: SmtpTestServer, realm: str) -> None:
    pool = SessionPool(max_messages=2)
    settings = server.settings()
    for _ in range(3):
        pool.send(realm, 1, settings, message(settings))
    assert server.connections == 2
    pool.close_all()


def test_pool_picks_up_a_new_settings_version(realm: str) -> None:
    with SmtpTestServer() as old_server, SmtpTestServer() as new_server:
        pool = SessionPool()
        old_settings, new_settings = old_server.settings(), new_server.settings()
        old = pool.session(realm, 1, old_settings)
        old.send(message(old_settings))
        new = pool.session(realm, 2, new_settings)
        assert new is not old and old.closed
        new.send(message(new_settings))
        assert len(old_server.messages) == 1 and len(new_server.wait_for(1)) == 1
        pool.close_all()


def test_pool_discard_closes_and_forgets(server: SmtpTestServer, realm: str) -> None:
    pool = SessionPool()
    session = pool.session(realm, 1, server.settings())
    pool.discard(realm)
    assert session.closed and realm not in pool
    pool.discard(realm)  # twice is fine
    assert pool.session(realm, 1, server.settings()) is not session
    pool.close_all()


# ---- the reply to the end of DATA: lost, slow ----------------------------------------------------------
# Short deadlines keep these fast: `timeout` 0.5 s for commands, `data_timeout` 2 s for the final reply.


def quick(server: SmtpTestServer, **overrides: Any) -> SmtpSettings:
    return server.settings(**{"timeout": 0.5, "data_timeout": 2, **overrides})


def test_a_lost_reply_to_the_end_of_data_is_ambiguous(server: SmtpTestServer) -> None:
    server.lose_reply_next()
    settings = quick(server)
    msg = message(settings)
    with open_session(settings) as session, pytest.raises(SmtpFailure) as caught:
        session.send(msg)
    error = caught.value
    assert error.ambiguous and (error.stage, error.code, error.kind) == ("data", None, Kind.CLOSED)
    assert error.text == (
        f"{server.host}:{server.port} closed the connection instead of replying to the end of data: "
        "the server may have accepted the message"
    )
    assert session.closed
    assert classify(error) is Outcome.RETRY and not counts_against(error)
    (received,) = server.wait_for(1)
    assert received.message["Message-ID"] == msg.message_id


def test_the_pool_raises_an_ambiguous_failure_instead_of_sending_again(
    server: SmtpTestServer, realm: str
) -> None:
    pool = SessionPool()
    settings = quick(server)
    pool.send(realm, 1, settings, message(settings, "first@example.com"))
    server.lose_reply_next()
    msg = message(settings, "second@example.com")
    with pytest.raises(SmtpFailure) as caught:
        pool.send(realm, 1, settings, msg)  # on the reused session: a drop there used to mean "send again"
    assert caught.value.ambiguous and caught.value.stage == "data"
    assert len(server.received_for("second@example.com")) == 1 and len(server.messages) == 2
    assert server.connections == 1 and realm not in pool
    # The caller's later retry sends the same message: one Message-ID, so receivers can tell a repeat.
    pool.send(realm, 1, settings, msg)
    assert {m.message["Message-ID"] for m in server.received_for("second@example.com")} == {msg.message_id}
    pool.close_all()


@pytest.mark.parametrize("at", ["mail", "rcpt", "data"])
def test_a_drop_before_the_body_is_not_ambiguous_and_gets_one_fresh_try(
    server: SmtpTestServer, realm: str, at: str
) -> None:
    settings = quick(server)
    server.drop_next(at=at)
    with open_session(settings) as session, pytest.raises(SmtpFailure) as caught:
        session.send(message(settings, "lone@example.com"))
    assert not caught.value.ambiguous and caught.value.stage == at and caught.value.reconnect
    assert server.messages == []

    pool = SessionPool()
    pool.send(realm, 1, settings, message(settings, "first@example.com"))
    server.drop_next(at=at)
    result = pool.send(realm, 1, settings, message(settings, "second@example.com"))
    assert result.code == 250
    assert len(server.received_for("second@example.com")) == 1 and server.connections == 3
    pool.close_all()


def test_a_final_reply_slower_than_timeout_but_within_data_timeout_is_delivered_once(
    server: SmtpTestServer, realm: str
) -> None:
    settings = quick(server, timeout=0.5, data_timeout=3)
    server.delay_data_reply(1.2)
    pool = SessionPool()
    started = time.monotonic()
    result = pool.send(realm, 1, settings, message(settings, "slow@example.com"))
    assert result.code == 250 and time.monotonic() - started >= 1.2
    assert len(server.received_for("slow@example.com")) == 1 and server.connections == 1
    session = pool.session(realm, 1, settings)
    assert session._smtp.sock is not None and session._smtp.sock.gettimeout() == 0.5  # back to `timeout`
    pool.send(realm, 1, settings, message(settings, "next@example.com"))
    assert len(server.messages) == 2 and server.connections == 1
    pool.close_all()


def test_a_final_reply_later_than_data_timeout_is_an_ambiguous_timeout(
    server: SmtpTestServer, realm: str
) -> None:
    settings = quick(server, timeout=5, data_timeout=0.5)  # data_timeout, not timeout, bounds the wait
    pool = SessionPool()
    pool.send(realm, 1, settings, message(settings, "first@example.com"))
    server.delay_data_reply(1.5)
    started = time.monotonic()
    with pytest.raises(SmtpFailure) as caught:
        pool.send(realm, 1, settings, message(settings, "late@example.com"))
    assert time.monotonic() - started < 1.4
    error = caught.value
    assert error.ambiguous and (error.stage, error.code, error.kind) == ("data", None, Kind.TIMEOUT)
    assert error.text == (
        f"no reply to the end of data from {server.host}:{server.port} after 0.5s: "
        "the server may have accepted the message"
    )
    assert not counts_against(error)
    assert len(server.received_for("late@example.com")) == 1 and server.connections == 1
    pool.close_all()


def _batch(settings: SmtpSettings, count: int) -> list[OutgoingMessage]:
    return [message(settings, f"user{i}@example.com") for i in range(count)]


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("lost", [0, 2, 4])
def test_send_many_a_lost_reply_makes_only_that_message_ambiguous(pipelining: bool, lost: int) -> None:
    with SmtpTestServer(pipelining=pipelining) as server:
        settings = quick(server)
        server.lose_reply_next(after=lost)
        with open_session(settings) as session:
            outcomes = session.send_many(_batch(settings, 5))
            assert session.closed
        assert [isinstance(o, SendResult) for o in outcomes] == [i < lost for i in range(5)]
        ambiguous = outcomes[lost]
        assert isinstance(ambiguous, SmtpFailure) and ambiguous.ambiguous and ambiguous.stage == "data"
        for later in outcomes[lost + 1 :]:
            assert isinstance(later, SmtpFailure) and not later.ambiguous and later.reconnect
        assert sorted(r for m in server.messages for r in m.recipients) == [
            f"user{i}@example.com" for i in range(lost + 1)
        ]


@pytest.mark.parametrize("dropped", [0, 2])
def test_send_many_pipelined_a_drop_at_mail_is_never_ambiguous(dropped: int) -> None:
    # Message `dropped`'s MAIL goes out with the body of the one before, which is answered first.
    with SmtpTestServer(pipelining=True) as server:
        settings = quick(server)
        server.drop_next(at="mail", after=dropped)
        with open_session(settings) as session:
            outcomes = session.send_many(_batch(settings, 4))
        assert [isinstance(o, SendResult) for o in outcomes] == [i < dropped for i in range(4)]
        for failed in outcomes[dropped:]:
            assert isinstance(failed, SmtpFailure) and not failed.ambiguous and failed.reconnect
        assert len(server.messages) == dropped


@pytest.mark.parametrize(("delay", "data_timeout", "delivered"), [(1.0, 3, 3), (1.0, 0.4, 1)])
def test_send_many_pipelined_the_body_reply_waits_for_data_timeout(
    delay: float, data_timeout: float, delivered: int
) -> None:
    with SmtpTestServer(pipelining=True) as server:
        settings = quick(server, timeout=0.5, data_timeout=data_timeout)
        server.delay_data_reply(delay, after=1)
        with open_session(settings) as session:
            outcomes = session.send_many(_batch(settings, 3))
        if delivered == 3:
            assert all(isinstance(o, SendResult) for o in outcomes)
        else:
            slow = outcomes[1]
            assert isinstance(slow, SmtpFailure) and slow.ambiguous and slow.kind == Kind.TIMEOUT
            assert f"after {data_timeout:g}s" in slow.text
            assert isinstance(outcomes[2], SmtpFailure) and not outcomes[2].ambiguous
        # The slow one reached the server either way; nothing reached it twice.
        assert sorted(r for m in server.messages for r in m.recipients) == [
            f"user{i}@example.com" for i in range(2 if delivered == 1 else 3)
        ]


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # the last line break is added
        (b".hidden\r\n", b"..hidden\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),  # a lone dot would end the message early
        (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
        (b"a\n.b\r\n", b"a\n..b\r\n.\r\n"),  # after a bare LF too, as smtplib does
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
    ],
)
def test_dot_stuffing_follows_smtplib(data: bytes, wire: bytes) -> None:
    assert dot_stuffed(data) == wire


def test_a_body_with_leading_dots_arrives_intact(server: SmtpTestServer) -> None:
    settings = server.settings()
    rendered = RenderedEmail("dots", ".\n.. two\n.three\n", "<p>.</p>")
    with open_session(settings) as session:
        session.send(build_message(settings, rendered, "alice@example.com"))
    (received,) = server.wait_for(1)
    assert received.message.get_body(("plain",)).get_content().replace("\r\n", "\n") == ".\n.. two\n.three\n"
