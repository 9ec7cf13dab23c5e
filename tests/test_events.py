import pytest

from config.errors import InvalidInput
from templates.catalogue import DEFAULT_NOTIFY_EVENTS
from worker.jobs.events import event_job, parse_event

KEYCLOAK_EVENT = {
    "id": "5b8f-1",
    "time": 1764000000000,
    "type": "LOGIN_ERROR",
    "realmId": "acme",
    "clientId": "account-console",
    "ipAddress": "203.0.113.7",
    "error": "invalid_user_credentials",
    "details": {"username": "alice", "auth_method": "openid-connect"},
    "user": {"email": "alice@example.com", "firstName": "Alice", "lastName": "Liddell", "locale": "de"},
}


def test_keycloak_event_maps_to_its_notice():
    job = event_job("acme", parse_event(KEYCLOAK_EVENT), DEFAULT_NOTIFY_EVENTS)
    assert job is not None
    assert job.template == "event-login_error"
    assert job.to == "alice@example.com"
    assert job.locale == "de"
    assert job.context["event"]["ip_address"] == "203.0.113.7"
    assert job.context["event"]["client_id"] == "account-console"
    assert job.context["user"] == {
        "username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com",
    }  # fmt: skip
    # The event id makes a repeated publication of the same event one job.
    assert job.id == event_job("acme", parse_event(KEYCLOAK_EVENT), DEFAULT_NOTIFY_EVENTS).id


def test_an_idempotency_key_names_the_job_of_an_event_without_an_id():
    event = parse_event({k: v for k, v in KEYCLOAK_EVENT.items() if k != "id"})
    first = event_job("acme", event, DEFAULT_NOTIFY_EVENTS, idempotency_key="entry-7")
    again = event_job("acme", event, DEFAULT_NOTIFY_EVENTS, idempotency_key="entry-7")
    other = event_job("acme", event, DEFAULT_NOTIFY_EVENTS)
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id


def test_event_types_the_realm_does_not_notify_are_ignored():
    event = parse_event({**KEYCLOAK_EVENT, "type": "LOGIN"})
    assert event_job("acme", event, DEFAULT_NOTIFY_EVENTS) is None
    assert event_job("acme", parse_event(KEYCLOAK_EVENT), ("UPDATE_PASSWORD",)) is None


def test_email_may_come_from_details():
    event = parse_event(
        {"type": "UPDATE_PASSWORD", "details": {"email": "bob@example.com", "username": "bob"}}
    )
    job = event_job("acme", event, DEFAULT_NOTIFY_EVENTS)
    assert job is not None and job.to == "bob@example.com"


@pytest.mark.parametrize(
    "event, field",
    [
        ("not json object", "event"),
        ({}, "event.type"),
        ({"type": "login error"}, "event.type"),
        ({"type": "LOGIN_ERROR", "details": "x"}, "event.details"),
        ({"type": "LOGIN_ERROR", "user": {"email": "a@b.example\r\nBcc: c@d.example"}}, "to"),
        ({"type": "LOGIN_ERROR"}, "event.user.email"),
    ],
)
def test_malformed_events_name_the_problem(event, field):
    with pytest.raises(InvalidInput) as excinfo:
        event_job("acme", parse_event(event), DEFAULT_NOTIFY_EVENTS)
    assert excinfo.value.problems[0][0] == field
