"""Hostile input: property tests (hypothesis) plus a corpus of known attacks.

Every input either gets a clear error at the API (InvalidInput naming the field) or becomes a job that ends
with a result (sent, or a dead letter with a reason): never another exception, never a stuck job. For what
is sent, the SMTP server's side is checked: exactly the one envelope recipient, exactly the headers the
builder writes, one of each, nothing injected.

Runs on the session's real Redis and in-thread Celery worker (tests/conftest.py) and a real SMTP server.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import InvalidInput
from config.smtp import parse_smtp_settings
from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration

USER = {"username": "alice", "first_name": "Alice", "last_name": "L", "email": "alice@example.com"}
CONTEXT = {
    "user": USER,
    "realm_name": "ACME",
    "link": "https://iam.example.com/reset?k=1",
    "link_expiration": 30,
}
HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "auto-submitted", "content-type"}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

# Pieces attackers use; hypothesis glues them to arbitrary text (surrogates, controls, anything).
FRAGMENTS = [
    "\r\nBcc: eve@evil.example", "\nBcc: eve@evil.example", "\rX-Injected: 1", "\r\n\r\n<html>",
    "\x00", "\r", "\n", "\u2028", "\u0085", "\ud800", "\udfff", "=?utf-8?b?QmNjOiBldmVA?=", "%0d%0aBcc:",
    "\x1b[2J", "{{ 7*7 }}", "<script>alert(1)</script>", "..", "/", "@", '"', "<eve@evil.example>",
    ", eve@evil.example", "\t", " ", "é", "ѕ", "ｅ", "x" * 300, "RCPT TO:<eve@evil.example>",
]  # fmt: skip
hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), min_size=1, max_size=4).map("".join),
)


@pytest.fixture(scope="module")
def server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as found:
        yield found


@pytest.fixture(scope="module")
def hostile_realm(server: SmtpTestServer, celery_worker: Any) -> str:
    realm = f"hostile-{uuid.uuid4().hex[:8]}"
    runtime().store.save(realm, server.settings_dict(from_display_name="ACME Security", allow_utf8=True))
    return realm


def check_sent(server: SmtpTestServer, result: dict[str, Any], to: str) -> None:
    """The server's side of a sent job: one recipient, the expected headers, nothing more."""
    [received] = [m for m in server.messages if m.message["Message-ID"] == result["message_id"]]
    assert received.recipients == result["accepted"] and len(received.recipients) == 1
    names = [name.lower() for name in received.message]
    assert set(names) <= HEADERS | {"reply-to"}, names
    assert len(names) == len(set(names)), f"a header appears twice: {names}"
    assert "bcc" not in names and "cc" not in names
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\n" not in head.replace(b"\r\n", b""), "a bare LF in the header block"
    assert b"\x00" not in received.data
    assert "eve@evil.example" not in " ".join(received.recipients)


def run(default_realm: str, server: SmtpTestServer, **kwargs: Any) -> dict[str, Any] | InvalidInput:
    """Enqueue through the API; an InvalidInput is returned, a job is waited for and checked on the server."""
    kwargs.setdefault("to", f"u-{uuid.uuid4().hex[:8]}@example.com")
    kwargs.setdefault("context", CONTEXT)
    template = kwargs.pop("template", "password-reset")
    realm = kwargs.pop("realm", default_realm)
    to = kwargs.pop("to")
    try:
        job_id = api.send_email(realm, template, to, **kwargs)
    except InvalidInput as error:
        assert error.problems and all(field for field, _ in error.problems), error
        assert "\n" not in str(error) or "\n" in repr(to)  # one line (unless it quotes the input)
        return error
    result = api.wait_for_result(job_id, timeout=30)
    assert result["status"] in ("sent", "dead-lettered"), result
    if result["status"] == "sent":
        check_sent(server, result, to)
    else:
        assert result["reason"] and result["error"]
    return result


# ---- properties ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["to", "to_name", "locale", "idempotency_key", "template", "realm"])
@PROPERTY
@given(value=hostile_text)
def test_a_hostile_argument_is_refused_or_harmless(hostile_realm, server, field, value):
    outcome = run(hostile_realm, server, **{field: value})
    if isinstance(outcome, InvalidInput):
        assert outcome.problems[0][0] == field
    elif any(ch in value for ch in "\r\n\x00"):
        pytest.fail(f"{field}={value!r} with a line break was accepted: {outcome}")


@PROPERTY
@given(
    first_name=hostile_text,
    realm_name=hostile_text,
    extra=st.dictionaries(hostile_text, hostile_text, max_size=3),
)
def test_hostile_context_values_never_reach_the_headers(hostile_realm, server, first_name, realm_name, extra):
    context = {**extra, **CONTEXT, "user": {**USER, "first_name": first_name}, "realm_name": realm_name}
    outcome = run(hostile_realm, server, context=context)
    if isinstance(outcome, InvalidInput):
        assert outcome.problems[0][0].startswith("context")


@PROPERTY
@given(event=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
), base=st.booleans())  # fmt: skip
def test_malformed_events_get_a_clear_error_or_a_result(hostile_realm, server, event, base):
    if base and isinstance(event, dict):  # half of them look like a real event with a hostile part
        event = {"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com", **event}, **event}
    try:
        job_id = api.publish_event(hostile_realm, event)
    except InvalidInput as error:
        assert error.problems[0][0].startswith("event")
        return
    if job_id is not None:
        result = api.wait_for_result(job_id, timeout=30)
        assert result["status"] in ("sent", "dead-lettered", "ignored", "rejected"), result
        if result["status"] == "sent":
            check_sent(server, result, "")


SETTINGS_FIELDS = ["from", "from_display_name", "reply_to", "reply_to_display_name", "envelope_from", "host",
                   "username", "password", "oauth_token_url", "oauth_client_id", "oauth_scope"]  # fmt: skip


@pytest.mark.parametrize("field", SETTINGS_FIELDS)
@settings(max_examples=60, deadline=None)
@given(value=hostile_text)
def test_hostile_settings_values_are_refused_by_name(field, value):
    base = {"from": "noreply@example.com", "host": "smtp.example.com", "auth": True, "username": "u",
            "password": "p", "reply_to": "help@example.com"}  # fmt: skip
    try:
        settings_ = parse_smtp_settings({**base, field: value})
    except InvalidInput as error:
        assert error.problems and error.problems[0][0], error
        return
    assert not any(ch in value for ch in "\r\n\x00"), f"{field}={value!r} accepted with a line break"
    assert settings_.to_public()  # and it can be shown


# ---- the corpus of known attacks --------------------------------------------------------------------------

NESTED: dict[str, Any] = {}
_inner = NESTED
for _ in range(3000):
    _inner["x"] = {}
    _inner = _inner["x"]

CORPUS = [
    ("to", "a@example.com\r\nBcc: eve@evil.example", "to"),
    ("to", "a@example.com\nBcc: eve@evil.example", "to"),
    ("to", "a@example.com\rBcc: eve@evil.example", "to"),
    ("to", "a@example.com>\r\nRCPT TO:<eve@evil.example", "to"),
    ("to", "a@example.com, eve@evil.example", "to"),
    ("to", '"a@example.com" <eve@evil.example>', "to"),
    ("to", "Alice <a@example.com>", "to"),
    ("to", "a@example.com\x00eve@evil.example", "to"),
    ("to", "a" * 250 + "@example.com", "to"),
    ("to", "a@" + "b" * 250 + ".com", "to"),
    ("to", "not an address", "to"),
    ("to", "@example.com", "to"),
    ("to", "a@", "to"),
    ("to", "a@[127.0.0.1]", "to"),
    ("to", "\ud800@example.com", "to"),
    ("to", "a@exa\udfffmple.com", "to"),
    ("to", "", "to"),
    ("to", None, "to"),
    ("to", ["a@example.com", "eve@evil.example"], "to"),
    ("to_name", "Eve\r\nBcc: eve@evil.example", "to_name"),
    ("to_name", "x" * 201, "to_name"),
    ("to_name", "\ud83d", "to_name"),
    ("locale", "de\r\nX-Evil: 1", "locale"),
    ("locale", "../../etc/passwd", "locale"),
    ("idempotency_key", "k\r\nX: 1", "idempotency_key"),
    ("idempotency_key", "k" * 201, "idempotency_key"),
    ("template", "../../etc/passwd", "template"),
    ("template", "no-such-template", "template"),
    ("template", "_layout", "template"),
    ("template", "password-reset\r\nBcc: eve@evil.example", "template"),
    ("realm", "../other", "realm"),
    ("realm", "unknown-realm-" + "z" * 8, "realm"),
    ("realm", "a" * 129, "realm"),
    ("context", {"blob": "x" * 70_000}, "context"),
    ("context", {**CONTEXT, "link": "javascript:alert(1)"}, "context.link"),
    ("context", {**CONTEXT, "link": "data:text/html,<script>"}, "context.link"),
    ("context", {"s": "\ud800"}, "context"),
    ("context", {"n": float("nan")}, "context"),
    ("context", NESTED, "context"),
    ("context", "not a dict", "context"),
    ("expires_in", -1, "expires_in"),
    ("expires_in", float("inf"), "expires_in"),
    ("expires_in", float("nan"), "expires_in"),
    ("expires_in", "10", "expires_in"),
    ("expires_in", True, "expires_in"),
]


@pytest.mark.parametrize(
    "field, value, reported", CORPUS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(CORPUS)]
)
def test_known_attack_is_refused_at_the_api_naming_the_field(hostile_realm, server, field, value, reported):
    outcome = run(hostile_realm, server, **{field: value})
    assert isinstance(outcome, InvalidInput), f"{field}={value!r} was accepted: {outcome}"
    assert outcome.problems[0][0] == reported, outcome


@pytest.mark.parametrize("to, wire", [
    ("admin@ехаmple.com", "admin@xn--mple-43d3a6i.com"),  # Cyrillic 'е', 'х', 'а': another domain
    ("admin@exаmple.com", "admin@xn--exmple-4nf.com"),
    ("Admin@Example.COM", "Admin@example.com"),
])  # fmt: skip
def test_idn_homographs_travel_as_punycode_so_they_cannot_pass_for_the_real_domain(
    hostile_realm, server, to, wire
):
    result = run(hostile_realm, server, to=to)
    assert isinstance(result, dict) and result["status"] == "sent"
    [received] = [m for m in server.messages if m.message["Message-ID"] == result["message_id"]]
    assert received.recipients == [wire]
    assert wire in str(received.message["To"])


EVENT_CORPUS = [
    ([], "event"),
    ("UPDATE_PASSWORD", "event"),
    (None, "event"),
    ({}, "event.type"),
    ({"type": "update_password"}, "event.type"),
    ({"type": "UPDATE_PASSWORD\r\nBcc: x"}, "event.type"),
    ({"type": "X" * 100}, "event.type"),
    ({"type": 42}, "event.type"),
    ({"type": "UPDATE_PASSWORD"}, "event.user.email"),
    ({"type": "UPDATE_PASSWORD", "user": "alice"}, "event.user"),
    ({"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com\r\nBcc: eve@evil.example"}}, "to"),
    ({"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com", "locale": "de\nX: 1"}}, "locale"),
    ({"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com"}, "details": [1, 2]}, "event.details"),
    (
        {"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com"}, "details": {"x": "y" * 70_000}},
        "event",
    ),
    ({"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com"}, "details": NESTED}, "event"),
]


@pytest.mark.parametrize("event, reported", EVENT_CORPUS, ids=[str(i) for i in range(len(EVENT_CORPUS))])
def test_malformed_event_json_is_refused_naming_the_field(hostile_realm, event, reported):
    with pytest.raises(InvalidInput) as caught:
        api.publish_event(hostile_realm, event)
    assert caught.value.problems[0][0].startswith(reported), caught.value


# ---- sandbox escapes and bombs in a realm's own templates ----------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ msg.__self__.strings }}",
    "{{ self._TemplateReference__context }}",
    "{{ 'a'|attr('__class__') }}",
    "{% include '../../../../etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{{ 'a' * 10**9 }}",
    "{{ 10 ** (10 ** 10) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '{:999999999}'.format(1) }}",
    "{{ 'x'|center(999999999) }}",
    "{{ range(10**9)|list }}",
    "{{ range(100000)|join('x' * 1000) }}",
    "{% set ns = namespace(x='a') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
    "{{ undefined_variable.anything }}",
    "{% for %}",
    "{{ ['a' * 1000] * 4000 }}",
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ d('x', 30) }}",
    "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}{{ m() }}",
    "{{ ([[1]] * 100000)|sum(start=[]) }}",
    # Only burns CPU: stopped by the render's deadline (2 s), a dead letter rather than a killed task.
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
]


@pytest.fixture
def realm_templates(hostile_realm, tmp_path: Path, monkeypatch) -> Path:
    """The worker's renderer (shared with the in-thread worker) reads realm overrides from tmp_path."""
    renderer = runtime().renderer
    monkeypatch.setattr(renderer, "realm_root", tmp_path)
    monkeypatch.setattr(renderer, "reload_interval", 0.0)
    renderer.reload()
    yield tmp_path
    renderer.reload()


@pytest.mark.parametrize("source", ESCAPES, ids=[str(i) for i in range(len(ESCAPES))])
def test_a_sandbox_escape_or_bomb_in_a_realm_template_is_dead_lettered_not_run(
    server, realm_templates, source
):
    realm = f"tpl-{uuid.uuid4().hex[:8]}"
    runtime().store.save(realm, server.settings_dict())
    (realm_templates / realm / "text").mkdir(parents=True)
    (realm_templates / realm / "text" / "password-reset.txt.j2").write_text(f"Hello\n{source}\n")
    before = len(server.messages)
    started = time.monotonic()
    result = run(realm, server)
    assert isinstance(result, dict)
    assert result["status"] == "dead-lettered" and result["reason"] == "template", result
    assert result["attempts"] == 1 and time.monotonic() - started < 10
    assert len(server.messages) == before
    assert "Traceback" not in result["error"]


def test_an_oversized_realm_template_is_refused(server, realm_templates):
    realm = f"tpl-{uuid.uuid4().hex[:8]}"
    runtime().store.save(realm, server.settings_dict())
    (realm_templates / realm / "text").mkdir(parents=True)
    (realm_templates / realm / "text" / "password-reset.txt.j2").write_text("x" * (300 * 1024))
    result = run(realm, server)
    assert isinstance(result, dict) and result["status"] == "dead-lettered" and result["reason"] == "template"
    assert "limit" in result["error"]


def test_the_worker_survived_everything(celery_worker, hostile_realm, server):
    """After the hostile examples above, the same worker still delivers a plain password reset."""
    result = run(hostile_realm, server)
    assert isinstance(result, dict) and result["status"] == "sent"
    assert os.getpid()  # the worker runs in this process: it did not take the test session down


@pytest.mark.parametrize(
    "value", ["\x00", "a\x00b\r\nBcc: eve@evil.example", "\x1b[2J\x07", "\u2028X-Evil: 1"]
)
def test_control_characters_in_the_context_never_reach_the_wire_raw(hostile_realm, server, value):
    context = {**CONTEXT, "realm_name": value, "user": {**USER, "first_name": value}}
    result = run(hostile_realm, server, context=context)
    assert isinstance(result, dict) and result["status"] == "sent"  # checked on the server side by run()
