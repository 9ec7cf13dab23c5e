"""The pure parts of bounces, as tables: DSN and ARF parsing, hard/soft, VERP tokens, the suppression policy,
and the parsers' behaviour on hostile input (never an exception)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.bounce_samples import arf_complaint, exim_dsn, exim_plain, postfix_dsn
from worker.bounces.arf import parse_arf
from worker.bounces.dsn import HARD, SOFT, kind_of, parse_dsn
from worker.bounces.record import bounce_addresses, job_of_message_id
from worker.bounces.suppression import FLAG, SEND, SKIP, decide
from worker.bounces.verp import split_verp, token_for, token_matches, verp_address

RCPT = "noreply+abcdefghijklmnop@acme.example"
TO = "bob@example.net"
MID = "<job-1@acme.example>"


@pytest.mark.parametrize(
    "action, status, kind",
    [
        ("failed", "5.1.1", HARD),
        ("failed", "5.7.1", HARD),
        ("delayed", "4.4.7", SOFT),
        ("failed", "4.2.2", SOFT),  # the status class decides over Action
        ("failed", None, HARD),  # no status: Action decides
        ("delayed", "", SOFT),
        ("delivered", "2.0.0", None),  # no bounce
        ("relayed", "2.0.0", None),
        ("expanded", "2.0.0", None),
        ("Failed ", "5.0.0", HARD),
        ("weird", None, None),
    ],
)
def test_kind_of(action, status, kind):
    assert kind_of(action, status) == kind


@pytest.mark.parametrize(
    "data, kind, status, code, standard",
    [
        (postfix_dsn(RCPT, TO, MID), HARD, "5.1.1", 550, True),
        (exim_dsn(RCPT, TO, MID), HARD, "5.2.1", 550, True),
        (
            postfix_dsn(
                RCPT, TO, MID, status="4.4.1", diagnostic="X-Postfix; connect to mail.example.net: timed out"
            ),
            SOFT,
            "4.4.1",
            None,
            True,
        ),
        (exim_plain(RCPT, TO), HARD, None, None, False),  # flufl.bounce's Exim detector
    ],
    ids=["postfix", "exim", "postfix-delayed", "exim-plain"],
)
def test_parse_dsn(data, kind, status, code, standard):
    report = parse_dsn(data)
    assert report is not None and report.standard is standard
    [recipient] = report.recipients
    assert (recipient.recipient, recipient.kind, recipient.status, recipient.smtp_code) == (
        TO,
        kind,
        status,
        code,
    )
    if standard:
        assert report.message_id == MID and report.original_to == TO
        assert recipient.diagnostic


def test_arf_complaint():
    complaint = parse_arf(arf_complaint(RCPT, TO, MID))
    assert complaint is not None
    assert (complaint.feedback_type, complaint.recipient, complaint.message_id) == ("abuse", TO, MID)
    assert parse_dsn(arf_complaint(RCPT, TO, MID)) is None  # a complaint is no bounce
    assert parse_arf(postfix_dsn(RCPT, TO, MID)) is None


HOSTILE = [
    b"",
    b"\x00\xff\xfe" * 1000,
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n",
    b'Content-Type: multipart/report; boundary="\r\n\r\n--\r\n--\r\n',
    b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822;\r\nAction: failed\r\n",
    b"Content-Type: message/delivery-status\r\n\r\nx\r\n\r\nFinal-Recipient: ;;;<<>>@\r\nAction: failed\r\nStatus: 9.9.9\r\n",
    b"Content-Type: message/feedback-report\r\n\r\n" + b"Feedback-Type: " + b"A" * 100_000 + b"\r\n",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
    + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 200,
    b"Subject: =?utf-8?b?////?=\r\nContent-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!",
    "Subject: héllo\r\n\r\nThe following address(es) failed:\r\n\r\n  ünïcode@exämple.net\r\n".encode(),
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_messages_parse_without_an_exception(data):
    parse_dsn(data)
    parse_arf(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data):
    parse_dsn(data)
    parse_arf(data)


KEY, OTHER = b"k" * 32, b"o" * 32


def test_verp_token_is_short_signed_and_stable():
    token = token_for(KEY, "acme", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21")
    assert len(token) == 16 and token == token_for(KEY, "acme", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21")
    assert token != token_for(KEY, "acme", "another-job") and token != token_for(
        KEY, "other-realm", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21"
    )
    assert token != token_for(OTHER, "acme", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21")
    assert token_matches(
        [OTHER, KEY], token, "acme", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21"
    )  # an old key verifies
    assert not token_matches([OTHER], token, "acme", "3f2b9c1e-8a4d-4c1b-9f7e-2d6a5b4c3e21")
    assert not token_matches([KEY], token, "acme", "another-job")


@pytest.mark.parametrize(
    "envelope, token, address",
    [
        ("bounces@acme.example", "abcdefghijklmnop", "bounces+abcdefghijklmnop@acme.example"),
        ("a" * 47 + "@acme.example", "abcdefghijklmnop", "a" * 47 + "+abcdefghijklmnop@acme.example"),  # 64
        ("a" * 48 + "@acme.example", "abcdefghijklmnop", None),  # 65: over the limit, VERP skipped
        ("no-at-sign", "abcdefghijklmnop", None),
    ],
)
def test_verp_address(envelope, token, address):
    assert verp_address(envelope, token) == address


@pytest.mark.parametrize(
    "address, base, token",
    [
        ("bounces+abcdefghijklmnop@acme.example", "bounces@acme.example", "abcdefghijklmnop"),
        ("<Bounces+ABCDEFGHIJKLMNOP@Acme.Example>", "bounces@acme.example", "abcdefghijklmnop"),
        ("bounces@acme.example", "bounces@acme.example", None),
        ("first.last+news@acme.example", "first.last+news@acme.example", None),  # not a token
        (
            "bounces+abcdefghijklmno1@acme.example",
            "bounces+abcdefghijklmno1@acme.example",
            None,
        ),  # 1 is no base32
    ],
)
def test_split_verp(address, base, token):
    assert split_verp(address) == (base, token)


@pytest.mark.parametrize(
    "suppressed, identity, decision",
    [(False, False, SEND), (False, True, SEND), (True, False, SKIP), (True, True, FLAG)],
)
def test_suppression_policy(suppressed, identity, decision):
    assert decide(suppressed, identity=identity) == decision


def test_bounce_addresses_and_message_id_fallback():
    book = bounce_addresses(
        {
            "a": {"from": "noreply@acme.example", "envelope_from": "Bounces@acme.example"},
            "b": {"from": "noreply@b.example"},
            "c": {"from": "noreply@b.example"},
        }
    )
    assert book == {"bounces@acme.example": ["a"], "noreply@b.example": ["b", "c"]}
    domains = {"a": "acme.example", "b": "b.example", "c": "b.example"}
    assert job_of_message_id("<job-1@acme.example>", domains, ("a",)).job_id == "job-1"
    assert job_of_message_id("<job-1@other.example>", domains, ("a",)) is None  # not the realm's domain
    assert job_of_message_id("<job-1@b.example>", domains, ("b", "c")) is None  # two realms: which one?
    assert job_of_message_id("<h=abc@acme.example>", domains, ("a",)) is None  # a hashed key names no job
    assert job_of_message_id(None, domains, ("a",)) is None
