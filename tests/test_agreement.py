"""Test Connection and delivery agree: the probe fails if and only if a real send with the same settings
fails, at the same stage, with the same failure kind.

Each row is a misconfiguration the hint table covers, made for real on loopback (aiosmtpd with trustme TLS,
a closed port, a port that never answers, ...). For each, the same settings go once through the probe
(worker/probe) and once through what a worker does for a message (worker/smtp: open_session, then
SmtpSession.send). Both walk the same code, so they must say the same thing; this test is what keeps it so.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from config.smtp import SmtpSettings, parse_smtp_settings
from tests.support.smtp_server import SmtpTestServer, blackhole_listener, closed_port, silent_after_greeting
from worker.content.message import build_message
from worker.content.render import RenderedEmail
from worker.policy import Outcome, classify
from worker.probe import hint_for, probe_smtp
from worker.smtp import Kind, SmtpFailure, open_session

USER, PASSWORD = "mailer@example.com", "agreement-pw-1"
SEND_STAGES = ("mail", "rcpt", "data")


@dataclass
class Case:
    server: dict[str, Any] = field(default_factory=dict)  # SmtpTestServer options; None: no server
    settings: dict[str, Any] = field(default_factory=dict)  # overrides of the server's settings
    trust: bool = True  # give the worker the test CA
    before: Callable[[SmtpTestServer], None] | None = None
    port: str | None = None  # "closed", "blackhole", "silent": a listener instead of an SMTP server
    kind: Kind | None = None  # the expected failure kind (None: both succeed)
    stage: str | None = None  # the probe's failing stage


CASES: dict[str, Case] = {
    "plain, no auth: works": Case(),
    "starttls with auth: works": Case({"tls": "starttls", "require_auth": (USER, PASSWORD)}),
    "implicit TLS with auth: works": Case({"tls": "implicit", "require_auth": (USER, PASSWORD)}),
    "wrong port (nothing listens)": Case(port="closed", kind=Kind.REFUSED, stage="connect"),
    "a port that accepts and never greets": Case(port="blackhole", kind=Kind.NO_GREETING, stage="ehlo"),
    "a server that greets, then stops answering": Case(port="silent", kind=Kind.TIMEOUT, stage="ehlo"),
    "ssl on a StartTLS port": Case(
        {"tls": "starttls"}, {"ssl": True, "starttls": False}, kind=Kind.TLS_HANDSHAKE, stage="tls"
    ),
    "starttls on an implicit-TLS port": Case(
        {"tls": "implicit"}, {"ssl": False, "starttls": True}, kind=Kind.NO_GREETING, stage="ehlo"
    ),
    "StartTLS not offered (stripped)": Case(
        {"tls": "starttls", "offer_starttls": False}, {"starttls": True}, kind=Kind.NO_STARTTLS, stage="tls"
    ),
    "certificate not trusted": Case({"tls": "implicit"}, trust=False, kind=Kind.CERT_UNTRUSTED, stage="tls"),
    "certificate for another host": Case(
        {"tls": "starttls", "cert_hosts": ("other.example.invalid",)}, kind=Kind.CERT_HOSTNAME, stage="tls"
    ),
    "wrong password": Case(
        {"tls": "starttls", "require_auth": (USER, PASSWORD)},
        {"password": "wrong-pw"},
        kind=Kind.REPLY,
        stage="auth",
    ),
    "AUTH offered only after TLS, TLS off": Case(
        {"tls": "starttls", "require_auth": (USER, PASSWORD)},
        {"starttls": False},
        kind=Kind.NO_AUTH,
        stage="auth",
    ),
    "no mechanism in common": Case(
        {
            "tls": "starttls",
            "require_auth": (USER, PASSWORD),
            "auth_exclude": ("PLAIN", "LOGIN"),
        },
        kind=Kind.AUTH_MECHANISM,
        stage="auth",
    ),
    "login required to send": Case(
        {"require_auth": (USER, PASSWORD), "auth_require_tls": False},
        {"auth": False},
        kind=Kind.REPLY,
        stage="send",
    ),
    "sender refused": Case(
        before=lambda s: s.fail_next("553 5.7.1 sender not allowed", at="mail"), kind=Kind.REPLY, stage="send"
    ),
    "recipient refused": Case(
        before=lambda s: s.fail_next("550 5.1.1 no such user", at="rcpt"), kind=Kind.REPLY, stage="send"
    ),
    "data refused": Case(
        before=lambda s: s.fail_next("554 5.6.0 message refused", at="data"), kind=Kind.REPLY, stage="send"
    ),
    "unresolvable host": Case(
        port="closed", settings={"host": "nonexistent.invalid"}, kind=Kind.DNS, stage="resolve"
    ),
}


def refuse_to_resolve(host: str, *args: Any, **kwargs: Any) -> Any:
    if host == "nonexistent.invalid":  # fails on this machine: a real query would leave it
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return REAL_GETADDRINFO(host, *args, **kwargs)


REAL_GETADDRINFO = socket.getaddrinfo


@contextmanager
def target(case: Case) -> Iterator[tuple[SmtpSettings, str | None, SmtpTestServer | None]]:
    """The settings to test (timeouts short), the CA to trust, and the server when there is one."""
    base = {"from": "noreply@example.com", "connect_timeout": 1, "timeout": 1, "data_timeout": 2}
    if case.port is not None:
        listener: AbstractContextManager[int] = {
            "blackhole": blackhole_listener,
            "silent": silent_after_greeting,
        }.get(case.port, lambda: _closed())()
        with listener as port:
            yield (
                parse_smtp_settings({**base, "host": "127.0.0.1", "port": port, **case.settings}),
                None,
                None,
            )
        return
    with SmtpTestServer(**case.server) as server:
        if case.before is not None:
            case.before(server)
        settings = server.settings_dict(**base, **case.settings)
        yield parse_smtp_settings(settings), server.ca_file if case.trust else None, server


@contextmanager
def _closed() -> Iterator[int]:
    yield closed_port()


def message(settings: SmtpSettings) -> Any:
    rendered = RenderedEmail(subject="Agreement", text="It works.", html="<p>It works.</p>")
    return build_message(settings, rendered, "admin@example.com")


def deliver_once(settings: SmtpSettings, ca_file: str | None) -> SmtpFailure | None:
    """What a worker does for one message, without retries: open the session, send."""
    try:
        with open_session(settings, ca_file=ca_file) as session:
            session.send(message(settings))
    except SmtpFailure as failure:
        return failure
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_the_probe_fails_where_and_how_delivery_fails(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    monkeypatch.setattr(socket, "getaddrinfo", refuse_to_resolve)
    with target(case) as (settings, ca_file, server):
        status = probe_smtp(settings, ca_file=ca_file, send=lambda: message(settings))
        if server is not None and case.before is not None:
            server.reset()
            case.before(server)
        failure = deliver_once(settings, ca_file)

    assert status.ok is (failure is None), (status.to_dict(), failure)
    if case.kind is None:
        return
    assert failure is not None
    probe_stage = "send" if failure.stage in SEND_STAGES else failure.stage
    assert (status.failed_stage, status.kind) == (probe_stage, failure.kind) == (case.stage, case.kind), (
        status.to_dict(),
        failure,
    )
    assert status.smtp_code == failure.code
    # The hint the admin reads is for the failure delivery would meet; and the outcome is one a worker acts on.
    assert status.hint == hint_for(probe_stage, failure.kind, settings, text=failure.text, code=failure.code)
    assert classify(failure) in (Outcome.RETRY, Outcome.SETTINGS, Outcome.PERMANENT)
