"""The producer endpoints on a real server: IAM events (queued, ignored with why, refused naming the field),
a queued job's status for a realm-limited token, and no 500 for any body (bulk: tests/test_http_bulk.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from config.names import BULK_START_TASK, EVENT_TASK, SEND_TASK
from tasks import api as python_api
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from worker.jobs.events import ignored_because
from worker.jobs.model import new_job
from worker.jobs.pending import realm_of
from worker.runtime import runtime

pytestmark = pytest.mark.integration

CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}


def event(to: str, kind: str = "UPDATE_PASSWORD", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "ipAddress": "198.51.100.4", "clientId": "account-console",
            "user": {"email": to, "username": "alice", "firstName": "Alice"}, **fields}  # fmt: skip


def address(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


# ---- events --------------------------------------------------------------------------------------------


def test_an_event_the_realm_notifies_is_queued_and_its_notice_delivered(
    api: ApiServer, celery_worker: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    to = address("event")
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{realm}/events", json=event(to))
        assert reply.status_code == 202, reply.text
        assert set(reply.json()) == {"job_id"}
        job_id = reply.json()["job_id"]
        assert python_api.wait_for_result(job_id)["status"] == "sent"
        status = client.get(f"/v1/jobs/{job_id}").json()
    assert (status["status"], status["realm"]) == ("sent", realm)
    assert status["sent_at"].endswith("Z")  # times in ISO 8601, as `mailworker status --json` shows them
    [message] = smtp_server.received_for(to)
    assert "198.51.100.4" in message.message.get_body(("plain",)).get_content()  # the event's address


def test_an_event_the_realm_does_not_notify_is_200_saying_why(
    api: ApiServer, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict(notify_events=["LOGIN_ERROR"]))
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{realm}/events", json=event(address("ignored"), "UPDATE_PASSWORD"))
    assert reply.status_code == 200
    assert reply.json() == {
        "job_id": None,
        "ignored": f"event type UPDATE_PASSWORD does not notify in realm {realm} (its notify_events setting)",
    }


def test_the_idempotency_key_header_makes_one_job_of_an_event_sent_twice(
    api: ApiServer, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    body = event(address("twice"))
    with api.client(producer_token) as client:
        ids = [client.post(f"/v1/realms/{realm}/events", json=body, headers={"Idempotency-Key": key}).json()["job_id"]
               for key in ("pw-1", "pw-1", "pw-2")]  # fmt: skip
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user": {"email": "a@example.com"}}, "event.type"),
        ({"type": "update password", "user": {"email": "a@example.com"}}, "event.type"),
        ({"type": "UPDATE_PASSWORD", "user": {"username": "alice"}}, "event.user.email"),
        ({"type": "UPDATE_PASSWORD", "user": {"email": "not an address"}}, "to"),
        ({"type": "UPDATE_PASSWORD", "user": "alice"}, "event.user"),
        ({"type": "UPDATE_PASSWORD", "details": [1], "user": {"email": "a@example.com"}}, "event.details"),
        (["UPDATE_PASSWORD"], "event"),
        ("UPDATE_PASSWORD", "event"),
        (None, "event"),  # no body at all
    ],
)
def test_a_bad_event_is_422_naming_the_field(
    api: ApiServer, producer_token: str, realm: str, smtp_server: SmtpTestServer, body: Any, field: str
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{realm}/events", json=body)
    assert reply.status_code == 422, reply.text
    assert [problem["field"] for problem in reply.json()["errors"]] == [field]


def test_an_event_for_a_realm_outside_the_tokens_realms_is_404(
    api: ApiServer, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    with api.client(new_token("producer", (f"{realm}-mine",))) as client:
        assert client.post(f"/v1/realms/{realm}/events", json=event(address("x"))).status_code == 404


@pytest.mark.parametrize(
    "kind, notify, has_template, why",
    [
        ("UPDATE_PASSWORD", ("UPDATE_PASSWORD",), True, None),
        ("LOGIN", ("UPDATE_PASSWORD",), True, "event type LOGIN does not notify in realm r (its notify_events setting)"),
        ("LOGIN", (), False, "event type LOGIN does not notify in realm r (its notify_events setting)"),
        ("LOGIN", ("LOGIN",), False, "event type LOGIN notifies in realm r, but there is no template event-login"),
    ],
)  # fmt: skip
def test_ignored_because(kind: str, notify: tuple[str, ...], has_template: bool, why: str | None) -> None:
    assert ignored_because("r", kind, notify, has_template) == why


# ---- a queued job's realm ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, realm",
    [
        ({"task": SEND_TASK, "args": [{"realm": "acme", "to": "a@example.com"}]}, "acme"),
        ({"task": EVENT_TASK, "args": ["acme", {"type": "LOGIN_ERROR"}]}, "acme"),
        ({"task": BULK_START_TASK, "args": ["bulk-1"]}, None),
        ({"task": SEND_TASK, "args": []}, None),
        ({"task": SEND_TASK, "args": ["acme"]}, None),
        ({"task": EVENT_TASK, "args": [{"realm": "acme"}]}, None),
        ({"task": SEND_TASK}, None),
        (None, None),
    ],
)
def test_realm_of_a_pending_entry(entry: dict[str, Any] | None, realm: str | None) -> None:
    assert realm_of(entry) == realm


def test_a_queued_job_shows_its_realm_to_a_token_of_that_realm_only(api: ApiServer, realm: str) -> None:
    # What a producer leaves when no worker took the job yet: the broker message and the pending ledger's
    # entry (tasks/api.py _publish_tracked). Only the entry here: no worker of the session can take it.
    job = new_job(realm, "password-reset", address("queued"), context=CONTEXT)
    pending = runtime().pending
    pending.track(job.id, SEND_TASK, [job.model_dump(mode="json")], "transactional")
    try:
        with api.client(new_token("producer", (realm,))) as client:
            reply = client.get(f"/v1/jobs/{job.id}")
        assert reply.status_code == 200, reply.text
        assert (reply.json()["status"], reply.json()["realm"]) == ("queued", realm)
        with api.client(new_token("producer", (f"{realm}-other",))) as client:
            assert client.get(f"/v1/jobs/{job.id}").status_code == 404
    finally:
        pending.done(job.id)
    with api.client(new_token("producer", (realm,))) as client:
        assert client.get(f"/v1/jobs/{job.id}").status_code == 404  # gone from the ledger: unknown


# ---- no 500, whatever the body ---------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
HOSTILE = [
    ("events", b"", JSON),
    ("events", b"null", JSON),
    ("events", b"[]", JSON),
    ("events", b"\xff\xfe\x00", JSON),
    ("events", b"[" * 50_000 + b"]" * 50_000, JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com"}, "details": ' + b"[" * 30 + b"]" * 30 + b"}", JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "time": 1e999999, "user": {"email": "a@example.com"}}', JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "time": NaN, "user": {"email": "a@example.com"}}', JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "id": "' + b"x" * 5000 + b'", "user": {"email": "a@example.com"}}', JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com\\r\\nBcc: x@example.com"}}', JSON),
    ("events", b'{"type": "UPDATE_PASSWORD", "user": {"email": "a@example.com", "locale": "\\ud800"}}', JSON),
    ("events", b'{"type": "UPDATE_PASSWORD"}', {"Content-Type": "text/plain"}),
    ("bulk", b"", JSON),
    ("bulk", b"42", JSON),
    ("bulk", b"[" * 50_000, JSON),
    ("bulk", b'{"template": "email-test", "recipients": "a@example.com"}', JSON),
    ("bulk", b'{"template": "email-test", "recipients": [null, 1]}', JSON),
    ("bulk", b'{"template": "email-test", "recipients": [{"email": ["a@example.com"]}]}', JSON),
    ("bulk", b'{"template": ["email-test"], "recipients": ["a@example.com"]}', JSON),
    ("bulk", b'{"template": "email-test", "chunk_size": 1e308, "recipients": ["a@example.com"]}', JSON),
    ("bulk", b'{"template": "email-test", "chunk_size": true, "recipients": ["a@example.com"]}', JSON),
    ("bulk", b'{"template": "email-test", "locale": {"x": 1}, "recipients": ["a@example.com"]}', JSON),
    ("bulk", b'{"template": "../../etc/passwd", "recipients": ["a@example.com"]}', JSON),
    ("bulk", b'{"template": "email-test", "recipients": []}', JSON),
    ("bulk", b"", NDJSON),
    ("bulk", b"\n\n\n", NDJSON),
    ("bulk", b'"email-test"\n"a@example.com"\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n', NDJSON),
    ("bulk", b'{"template": "email-test", "recipients": ["a@example.com"]}\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n{"email": "a@example.com"\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n\xff\xfe\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n' + b"[" * 100_000 + b"\n", NDJSON),
    ("bulk", b'{"template": "email-test"}\n' + b'"' + b"a" * 300_000 + b'"\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n{"email": "a@example.com", "context": ' + b"[" * 40 + b"]" * 40 + b"}\n", NDJSON),
    ("bulk", b'{"template": "email-test"}\n{"email": "a@example.com", "cc": "b@example.com"}\n', NDJSON),
    ("bulk", b'{"template": "email-test"}\n"a@example.com"\n', {"Content-Type": "text/csv"}),
]  # fmt: skip


@pytest.mark.parametrize(
    "path, body, headers", HOSTILE, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(HOSTILE)]
)
def test_no_body_gets_a_500(
    api: ApiServer, producer_token: str, realm: str, smtp_server: SmtpTestServer, path: str, body: bytes,
    headers: dict[str, str],
) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    before = set(runtime().bulk_jobs.newest())
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{realm}/{path}", content=body, headers=headers)
    assert reply.status_code in (400, 413, 415, 422), (reply.status_code, reply.text)
    assert set(reply.json()) <= {"error", "errors"}, reply.text
    assert set(runtime().bulk_jobs.newest()) <= before  # a refused bulk job leaves nothing behind
