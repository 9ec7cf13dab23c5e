"""classify as a table: what is retried, what is dead-lettered, what flags the settings."""

from __future__ import annotations

import pytest

from worker.policy import Outcome, classify
from worker.smtp import (
    Kind,
    SmtpFailure,
)

RETRY, PERMANENT, SETTINGS = Outcome.RETRY, Outcome.PERMANENT, Outcome.SETTINGS


@pytest.mark.parametrize(
    ("code", "stage", "kind", "outcome"),
    [
        # no reply at all: the network or the server is down for now
        (None, "connect", Kind.REFUSED, RETRY),
        (None, "connect", Kind.TIMEOUT, RETRY),
        (None, "data", Kind.TIMEOUT, RETRY),
        (None, "rcpt", Kind.CLOSED, RETRY),
        (None, "connect", None, RETRY),
        # 4xx: transient, whatever the stage
        (421, "connect", None, RETRY),
        (421, "mail", None, RETRY),
        (450, "rcpt", None, RETRY),
        (451, "rcpt", None, RETRY),
        (452, "rcpt", None, RETRY),
        (454, "tls", None, RETRY),
        (454, "auth", None, RETRY),
        # authentication: the realm's credentials or auth setup
        (535, "auth", None, SETTINGS),
        (534, "auth", None, SETTINGS),
        (538, "auth", None, SETTINGS),
        (530, "mail", None, SETTINGS),
        (504, "auth", None, SETTINGS),
        (None, "auth", Kind.NO_AUTH, SETTINGS),
        # TLS: certificates, host names, handshakes, StartTLS missing
        (None, "tls", Kind.TLS_HANDSHAKE, SETTINGS),
        # the server refuses us before any message: settings (host, port, allowed IP)
        (554, "connect", None, SETTINGS),
        (550, "ehlo", None, SETTINGS),
        # the message or recipient itself
        (550, "rcpt", None, PERMANENT),
        (551, "rcpt", None, PERMANENT),
        (553, "mail", None, PERMANENT),
        (552, "data", None, PERMANENT),
        (554, "data", None, PERMANENT),
        (None, "mail", Kind.SMTPUTF8, PERMANENT),
        # nonsense codes: try again later rather than lose the message
        (354, "data", None, RETRY),
    ],
)
def test_classify(code: int | None, stage: str, kind: str | None, outcome: Outcome) -> None:
    assert classify(SmtpFailure(code, "text", stage, kind=kind)) is outcome


def test_positional_form_and_text() -> None:
    error = SmtpFailure(550, "5.1.1 no such user", "rcpt", recipient="bob@example.com")
    assert (error.code, error.text, error.stage, error.recipient) == (
        550,
        "5.1.1 no such user",
        "rcpt",
        "bob@example.com",
    )
    assert str(error) == "rcpt: 550 5.1.1 no such user"
    assert (
        str(SmtpFailure(None, "connection refused by h:25", stage="connect"))
        == "connect: connection refused by h:25"
    )


@pytest.mark.parametrize(
    ("code", "kind", "reconnect"),
    [
        (421, None, True),
        (None, Kind.CLOSED, True),
        (None, Kind.TIMEOUT, True),
        (451, None, False),
        (550, None, False),
    ],
)
def test_reconnect_flag(code: int | None, kind: str | None, reconnect: bool) -> None:
    assert SmtpFailure(code, "x", "rcpt", kind=kind).reconnect is reconnect
