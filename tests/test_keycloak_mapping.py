"""The pure parts of Keycloak events: the mapping to IAM events, the look-up's decisions, the user's shape."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import InvalidInput
from templates.catalogue import DEFAULT_NOTIFY_EVENTS
from worker.delivery.iam_users import iam_grant, parse_user, user_url
from worker.jobs.events import EventUser, event_job, needs_lookup, parse_event, with_user
from worker.jobs.keycloak import MAX_EVENTS, from_keycloak, keycloak_error, to_iam_event
from worker.policy import Outcome, classify_lookup, lookup_reason

LOGIN_ERROR = {
    "id": "4f0c", "time": 1764000000000, "type": "LOGIN_ERROR", "realmId": "8d1e", "clientId": "account-console",
    "userId": "b2f6", "sessionId": None, "ipAddress": "203.0.113.7", "error": "invalid_user_credentials",
    "details": {"auth_method": "openid-connect", "username": "alice"},
}  # fmt: skip


@pytest.mark.parametrize(
    "representation, expected",
    [
        (LOGIN_ERROR, {"id": "4f0c", "type": "LOGIN_ERROR", "time": 1764000000000, "client_id": "account-console",
                       "ip_address": "203.0.113.7", "error": "invalid_user_credentials", "user_id": "b2f6",
                       "details": {"auth_method": "openid-connect", "username": "alice"},
                       "user": {"username": "alice"}}),
        ({"type": "UPDATE_PASSWORD", "details": {"email": "bob@example.com", "first_name": "Bob", "last_name": "B"}},
         {"type": "UPDATE_PASSWORD", "details": {"email": "bob@example.com", "first_name": "Bob", "last_name": "B"},
          "user": {"email": "bob@example.com", "first_name": "Bob", "last_name": "B"}}),
        ({"type": "REMOVE_TOTP", "userId": "u", "details": None, "realmName": "ACME"},
         {"type": "REMOVE_TOTP", "user_id": "u", "realm_name": "ACME", "details": {}}),
        # the p2-inc webhook: a prefixed type, the user and client in authDetails
        ({"type": "access.LOGIN_ERROR", "authDetails": {"userId": "u", "clientId": "c", "ipAddress": "198.51.100.1",
                                                        "username": "carol", "sessionId": "s"}},
         {"type": "LOGIN_ERROR", "user_id": "u", "client_id": "c", "ip_address": "198.51.100.1",
          "details": {"username": "carol"}, "user": {"username": "carol"}}),
        # an admin event notifies nobody: mapped to a type no realm lists
        ({"operationType": "UPDATE", "resourceType": "USER", "resourcePath": "users/u"},
         {"type": "ADMIN_UPDATE", "details": {}}),
        ({"type": "LOGIN_ERROR", "userId": "", "details": {"email": ""}},
         {"type": "LOGIN_ERROR", "details": {"email": ""}}),
    ],
)  # fmt: skip
def test_keycloak_representations_map_to_iam_events(representation: Any, expected: dict[str, Any]) -> None:
    assert to_iam_event(representation) == expected
    parse_event(expected)  # what comes out is an IAM event the service accepts


@pytest.mark.parametrize(
    "body, count, many",
    [
        (LOGIN_ERROR, 1, False),
        ([LOGIN_ERROR, LOGIN_ERROR], 2, True),
        ({"events": [LOGIN_ERROR]}, 1, True),
        ({"event": LOGIN_ERROR}, 1, False),
    ],
)
def test_one_event_an_array_or_a_wrapper(body: Any, count: int, many: bool) -> None:
    mapped = from_keycloak(body)
    assert (len(mapped.events), mapped.many) == (count, many)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"userId": "u"}, "type"),
        ({"type": "login-error"}, "type"),
        ({"type": 5}, "type"),
        ([LOGIN_ERROR, {"type": "LOGIN_ERROR", "details": []}], "[1].details"),
        ({"type": "LOGIN_ERROR", "details": {"email": 5}}, "details.email"),
        ({"type": "LOGIN_ERROR", "userId": "u" * 201}, "userId"),
        ({"type": "LOGIN_ERROR", "clientId": ["x"]}, "clientId"),
        ({"type": "LOGIN_ERROR", "time": True}, "time"),
        ({"type": "LOGIN_ERROR", "authDetails": "x"}, "authDetails"),
        ([LOGIN_ERROR, "x"], "[1]"),
        ([], ""),
        ([LOGIN_ERROR] * (MAX_EVENTS + 1), ""),
        (None, ""),
    ],
)
def test_bad_representations_name_the_field_as_keycloak_does(body: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        from_keycloak(body)
    assert excinfo.value.problems[0][0] == field


@pytest.mark.parametrize(
    "service_field, many, keycloak_field",
    [
        ("to", False, "details.email"),
        ("to", True, "[0].details.email"),
        ("[3].to", True, "[3].details.email"),
        ("[2].event.type", True, "[2].type"),
        ("event.user.email", False, "details.email"),
        ("event.user_id", False, "userId"),
        ("locale", False, "details.locale"),
        ("event", True, "[0]"),
    ],
)
def test_errors_after_the_mapping_speak_keycloak(service_field: str, many: bool, keycloak_field: str) -> None:
    error = keycloak_error(InvalidInput.one(service_field, "is wrong"), many)
    assert error.problems == [(keycloak_field, "is wrong")]


def test_an_event_with_only_a_user_id_waits_for_its_look_up_and_then_makes_the_job() -> None:
    event = parse_event(to_iam_event(LOGIN_ERROR))
    assert needs_lookup(event)
    with pytest.raises(InvalidInput):
        event_job("acme", event, DEFAULT_NOTIFY_EVENTS)  # no address yet
    found = with_user(event, parse_user({"id": "b2f6", "username": "alice.l", "email": "alice@example.com",
                                         "firstName": "Alice", "attributes": {"locale": ["de"]}}))  # fmt: skip
    assert not needs_lookup(found)
    job = event_job("acme", found, DEFAULT_NOTIFY_EVENTS)
    assert job is not None and (job.to, job.locale) == ("alice@example.com", "de")
    # what the event said of its user wins over the look-up (the username Keycloak logged)
    assert job.context["user"] == {"username": "alice", "first_name": "Alice", "last_name": "",
                                   "email": "alice@example.com"}  # fmt: skip
    assert not needs_lookup(parse_event({"type": "LOGIN_ERROR", "details": {"email": "a@example.com"}}))
    assert not needs_lookup(parse_event({"type": "LOGIN_ERROR"}))  # nothing to look up by: refused instead


@pytest.mark.parametrize(
    "user, expected",
    [
        ({"id": "1", "username": "a", "email": "a@example.com", "emailVerified": True, "firstName": "A",
          "lastName": "B", "attributes": {"locale": ["pt-BR"]}},
         EventUser(email="a@example.com", username="a", first_name="A", last_name="B", locale="pt-BR")),
        ({"id": "1", "username": "a"}, EventUser(username="a")),
        ({"id": "1", "email": "", "attributes": {"locale": ["<script>"]}}, EventUser()),
        ({"id": "1", "attributes": {"locale": "fr"}}, EventUser(locale="fr")),
        ({"id": "1", "attributes": None, "firstName": 5}, EventUser()),
    ],
)  # fmt: skip
def test_keycloak_users_become_event_users(user: dict[str, Any], expected: EventUser) -> None:
    assert parse_user(user) == expected


@pytest.mark.parametrize(
    "status, outcome, reason",
    [
        (None, Outcome.RETRY, "retry"),
        (500, Outcome.RETRY, "retry"),
        (503, Outcome.RETRY, "retry"),
        (429, Outcome.RETRY, "retry"),
        (408, Outcome.RETRY, "retry"),
        (404, Outcome.PERMANENT, "recipient"),
        (401, Outcome.SETTINGS, "lookup"),
        (403, Outcome.SETTINGS, "lookup"),
        (400, Outcome.SETTINGS, "lookup"),
        (302, Outcome.SETTINGS, "lookup"),
    ],
)
def test_what_a_failed_look_up_becomes(status: int | None, outcome: Outcome, reason: str) -> None:
    assert classify_lookup(status) is outcome
    assert lookup_reason(status) == reason


def test_the_admin_api_urls_quote_the_realm_and_the_user_id() -> None:
    from config.smtp import parse_smtp_settings

    settings = parse_smtp_settings({"from": "a@acme.example", "host": "h", "iam_url": "https://iam.example/auth/",
                                    "iam_client_id": "c", "iam_client_secret": "s3cr3t-value"})  # fmt: skip
    assert (
        user_url("acme", settings, "../x?y") == "https://iam.example/auth/admin/realms/acme/users/..%2Fx%3Fy"
    )
    grant = iam_grant("a/b", settings)
    assert grant.token_url == "https://iam.example/auth/realms/a%2Fb/protocol/openid-connect/token"
    assert (grant.kind, grant.field, grant.client_id, grant.client_secret) == (
        "iam",
        "iam_url",
        "c",
        "s3cr3t-value",
    )
    assert "s3cr3t-value" not in repr(grant)


@pytest.mark.parametrize("user_id", ["a\nb", " a", "a\x1b[31m"])
def test_a_user_id_is_printable(user_id: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        parse_event({"type": "LOGIN_ERROR", "userId": user_id})
    assert excinfo.value.problems[0][0] == "event.user_id"
