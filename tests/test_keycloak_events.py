"""POST /v1/realms/{realm}/keycloak-events end to end, and the worker's user look-up in the IAM.

Real parts only: the app on uvicorn (127.0.0.1), the session's Redis and Celery worker, an SMTP server on
loopback, and a stand-in Keycloak (tests/support/keycloak_stub.py) serving the token endpoint and the admin
API's users with Keycloak's JSON. Retries are the session's fast ones (tests/conftest.py: 0.2 s base delay,
at most 1 s, MAILWORKER_MAX_ATTEMPTS=4), so "retried, then dead-lettered" takes about two seconds.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tasks import api as tasks_api
from tests.support.keycloak_stub import KeycloakStub, StubClient
from tests.support.smtp_server import SmtpTestServer, closed_port
from worker.runtime import runtime

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Any:
    return celery_worker


@pytest.fixture
def iam() -> Iterator[KeycloakStub]:
    with KeycloakStub() as stub:
        yield stub


def address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


def login_error(user_id: str, **fields: Any) -> dict[str, Any]:
    """What Keycloak's event listener sends for a failed login: the user by id only, no address."""
    return {"id": str(uuid.uuid4()), "time": 1764000000000, "type": "LOGIN_ERROR", "realmId": str(uuid.uuid4()),
            "clientId": "account-console", "userId": user_id, "ipAddress": "203.0.113.7",
            "error": "invalid_user_credentials", "details": {"auth_method": "openid-connect",
            "redirect_uri": "https://iam.example.com/realms/acme/account"}, **fields}  # fmt: skip


def save_with_iam(
    realm: str, smtp: SmtpTestServer, iam: KeycloakStub, client: StubClient, **more: Any
) -> None:
    runtime().store.save(realm, smtp.settings_dict(iam_url=iam.url, iam_realm=client.realm,
                         iam_client_id=client.client_id, iam_client_secret=client.secret, **more))  # fmt: skip


def post(api: Any, token: str, realm: str, body: Any) -> Any:
    with api.client(token) as http:
        return http.post(f"/v1/realms/{realm}/keycloak-events", json=body)


def the_job(reply: Any) -> str:
    assert reply.status_code == 202, reply.text
    [job] = reply.json()["jobs"]
    assert job["job_id"] is not None, job
    return str(job["job_id"])


# ---- delivered ---------------------------------------------------------------------------------------------


def test_an_event_carrying_the_address_is_delivered(api: Any, producer_token: str, realm: str,
                                                     smtp_server: SmtpTestServer) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    to = address()
    event = {"type": "UPDATE_PASSWORD", "realmId": "acme-id", "clientId": "account-console", "userId": "u-1",
             "ipAddress": "198.51.100.4", "time": 1764000000000,
             "details": {"email": to, "username": "bob", "first_name": "Bob"}}  # fmt: skip
    job_id = the_job(post(api, producer_token, realm, event))
    assert tasks_api.wait_for_result(job_id)["status"] == "sent"
    [received] = smtp_server.received_for(to)
    body = received.message.get_body(("plain",)).get_content()
    assert "198.51.100.4" in body and "Bob" in body


def test_a_login_error_with_only_a_user_id_goes_to_the_address_the_iam_knows(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub
) -> None:
    client = iam.client("acme-users")  # the IAM realm differs from the service's realm name: iam_realm
    save_with_iam(realm, smtp_server, iam, client)
    alice = iam.user("acme-users", email=address(), firstName="Alice", username="alice")
    bob = iam.user("acme-users", email=address(), firstName="Bob", username="bob")
    events = [
        login_error(alice["id"]),
        login_error(bob["id"]),
        login_error(alice["id"], id=str(uuid.uuid4())),
    ]
    reply = post(api, producer_token, realm, events)
    assert reply.status_code == 202, reply.text
    jobs = [job["job_id"] for job in reply.json()["jobs"]]
    assert len(set(jobs)) == 3
    # (one may have been retried once: while a worker fetches the realm's token, the others do not wait)
    assert [tasks_api.wait_for_result(job)["status"] for job in jobs] == ["sent"] * 3
    assert (
        len(smtp_server.received_for(alice["email"])) == 2
        and len(smtp_server.received_for(bob["email"])) == 1
    )
    body = smtp_server.received_for(bob["email"])[0].message.get_body(("plain",)).get_content()
    assert "Bob" in body and "203.0.113.7" in body
    assert iam.token_requests == 1  # one token for every look-up: cached until shortly before it expires
    assert {(r, u) for r, u, _ in iam.lookups} == {("acme-users", alice["id"]), ("acme-users", bob["id"])}
    assert all(auth.startswith("Bearer eyJ-") for _, _, auth in iam.lookups)


def test_the_users_locale_chooses_the_language(api: Any, producer_token: str, realm: str,
                                               smtp_server: SmtpTestServer, iam: KeycloakStub) -> None:  # fmt: skip
    client = iam.client(realm)  # iam_realm left out: the realm's own name
    runtime().store.save(realm, smtp_server.settings_dict(iam_url=iam.url, iam_client_id=client.client_id,
                                                          iam_client_secret=client.secret))  # fmt: skip
    de, en = iam.user(realm, email=address(), locale="de"), iam.user(realm, email=address())
    jobs = [the_job(post(api, producer_token, realm, login_error(user["id"]))) for user in (de, en)]
    assert [tasks_api.wait_for_result(job)["status"] for job in jobs] == ["sent", "sent"]
    german = smtp_server.received_for(de["email"])[0].message["Subject"]
    english = smtp_server.received_for(en["email"])[0].message["Subject"]
    assert german != english


def test_a_revoked_cached_token_is_replaced_once(api: Any, producer_token: str, realm: str,
                                                 smtp_server: SmtpTestServer, iam: KeycloakStub) -> None:  # fmt: skip
    client = iam.client(realm)
    save_with_iam(realm, smtp_server, iam, client)
    first, second = iam.user(realm, email=address()), iam.user(realm, email=address())
    result = tasks_api.wait_for_result(the_job(post(api, producer_token, realm, login_error(first["id"]))))
    assert (result["status"], result["attempts"]) == (
        "sent",
        1,
    )  # the look-up that found the user is no attempt
    iam.revoke_tokens()  # e.g. the IAM restarted: its tokens are unknown now
    result = tasks_api.wait_for_result(the_job(post(api, producer_token, realm, login_error(second["id"]))))
    assert result["status"] == "sent" and iam.token_requests == 2


# ---- dead letters -----------------------------------------------------------------------------------------


def dead(job_id: str) -> dict[str, Any]:
    result = tasks_api.wait_for_result(job_id, timeout=30)
    assert result["status"] == "dead-lettered", result
    letter = runtime().dead_letters.get(job_id)
    assert letter.reason == result["reason"] and letter.error == result["error"]
    return result


def test_an_unknown_user_is_a_dead_letter_naming_the_user_id(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub
) -> None:
    save_with_iam(realm, smtp_server, iam, iam.client(realm))
    ghost = str(uuid.uuid4())
    result = dead(the_job(post(api, producer_token, realm, login_error(ghost))))
    assert (
        result["reason"] == "recipient" and result["attempts"] == 1
    )  # at once: asking again changes nothing
    assert ghost in result["error"] and "404" in result["error"]
    assert result["user_id"] == ghost
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    "email, words",
    [
        (None, "has no e-mail address"),
        ("alice at example.com", "the IAM's address for this user cannot be used"),
    ],
)
def test_a_user_without_a_usable_address_is_a_dead_letter_at_once(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub, email: Any,
    words: str,
) -> None:  # fmt: skip
    save_with_iam(realm, smtp_server, iam, iam.client(realm))
    user = iam.user(realm, email=email)
    result = dead(the_job(post(api, producer_token, realm, login_error(user["id"]))))
    assert result["reason"] == "recipient" and result["attempts"] == 1
    assert f"user {user['id']}" in result["error"] and words in result["error"]


def test_a_wrong_client_secret_is_a_dead_letter_naming_the_cause(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub
) -> None:
    client = iam.client(realm)
    wrong = StubClient(realm, client.client_id, "expired-" + client.secret)
    save_with_iam(realm, smtp_server, iam, wrong)
    user = iam.user(realm, email=address())
    result = dead(the_job(post(api, producer_token, realm, login_error(user["id"]))))
    assert result["reason"] == "lookup" and result["attempts"] == 1
    assert user["id"] in result["error"] and "401: unauthorized_client" in result["error"]
    assert "check iam_client_id and iam_client_secret" in result["error"]
    assert wrong.secret not in json.dumps(result)


def test_a_service_account_without_view_users_is_a_dead_letter_naming_the_cause(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub
) -> None:
    save_with_iam(realm, smtp_server, iam, iam.client(realm))
    iam.mode = "forbidden"
    result = dead(the_job(post(api, producer_token, realm, login_error(str(uuid.uuid4())))))
    assert result["reason"] == "lookup" and "403" in result["error"] and "view-users" in result["error"]


def test_a_realm_without_look_up_settings_dead_letters_the_event_saying_so(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    user_id = str(uuid.uuid4())
    result = dead(the_job(post(api, producer_token, realm, login_error(user_id))))
    assert result["reason"] == "lookup" and user_id in result["error"] and "--iam-url" in result["error"]


@pytest.mark.parametrize("down", ["error500", "closed-port"])
def test_an_iam_that_is_down_is_retried_then_dead_lettered_and_requeued_once_back(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub, down: str
) -> None:
    client = iam.client(realm)
    user = iam.user(realm, email=address())
    if down == "error500":
        save_with_iam(realm, smtp_server, iam, client)
        iam.mode = "error500"
    else:  # nobody listens there: connection refused
        runtime().store.save(realm, smtp_server.settings_dict(
            iam_url=f"http://127.0.0.1:{closed_port()}", iam_client_id=client.client_id,
            iam_client_secret=client.secret))  # fmt: skip
    job_id = the_job(post(api, producer_token, realm, login_error(user["id"])))
    result = dead(job_id)
    # MAILWORKER_MAX_ATTEMPTS=4 in the test session: retried three times, then given up as for SMTP.
    assert result["reason"] == "exhausted" and result["attempts"] == 4
    assert user["id"] in result["error"] and "retried later" in result["error"]
    assert smtp_server.messages == []
    # The dead letter holds the event: once the IAM is back, requeueing it delivers the notice.
    if down == "closed-port":
        save_with_iam(realm, smtp_server, iam, client)
    iam.mode = "ok"
    assert tasks_api.requeue_dead_letter(job_id) == job_id
    assert tasks_api.wait_for_result(job_id)["status"] == "sent"
    assert len(smtp_server.received_for(user["email"])) == 1


def test_a_slow_iam_is_given_up_on_at_the_timeout_and_retried(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub
) -> None:
    client = iam.client(realm)
    save_with_iam(realm, smtp_server, iam, client, timeout=0.5)
    user = iam.user(realm, email=address())
    iam.mode, iam.delay = "slow", 30
    result = dead(the_job(post(api, producer_token, realm, login_error(user["id"]))))
    assert result["reason"] == "exhausted" and "no answer in time" in result["error"]


# ---- the endpoint ------------------------------------------------------------------------------------------


def test_events_the_realm_does_not_notify_are_ignored_with_the_reason(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict(notify_events=["LOGIN_ERROR"]))
    body = {"events": [{"type": "LOGIN", "userId": "u-1"}, {"type": "access.LOGIN_ERROR", "authDetails": {
        "userId": "u-2", "ipAddress": "203.0.113.9", "username": "carol"}, "details": {"email": address()}},
        {"operationType": "CREATE", "resourceType": "USER", "realmId": "x"}]}  # fmt: skip
    reply = post(api, producer_token, realm, body)
    assert reply.status_code == 202, reply.text
    first, second, third = reply.json()["jobs"]
    assert first == {"job_id": None, "type": "LOGIN",
                     "ignored": f"event type LOGIN does not notify in realm {realm} (its notify_events setting)"}  # fmt: skip
    assert second["type"] == "LOGIN_ERROR" and second["ignored"] is None
    assert tasks_api.wait_for_result(second["job_id"])["status"] == "sent"
    assert third["job_id"] is None and third["type"] == "ADMIN_CREATE"


def test_the_same_keycloak_event_posted_twice_is_one_job(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    event = {"id": str(uuid.uuid4()), "type": "UPDATE_TOTP", "details": {"email": address()}}
    assert the_job(post(api, producer_token, realm, event)) == the_job(
        post(api, producer_token, realm, event)
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ([{"type": "LOGIN_ERROR", "userId": "u"}, {"userId": "u"}], "[1].type"),
        ([{"type": "LOGIN_ERROR", "userId": "u"}, {"type": "login error"}], "[1].type"),
        ({"type": "LOGIN_ERROR", "details": "x"}, "details"),
        ({"type": "LOGIN_ERROR", "details": {"email": "not an address"}}, "details.email"),
        (
            [{"type": "LOGIN_ERROR", "details": {"email": "a@b.example\r\nBcc: c@d.example"}}],
            "[0].details.email",
        ),
        ({"type": "LOGIN_ERROR"}, "details.email"),
        ({"type": "LOGIN_ERROR", "userId": 7}, "userId"),
        ({"type": "LOGIN_ERROR", "userId": "u", "time": "yesterday"}, "time"),
        ([], ""),
        ("LOGIN_ERROR", ""),
        ([{"type": "LOGIN_ERROR", "userId": "u"}, 5], "[1]"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_nothing_is_queued(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, body: Any, field: str
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    rt = runtime()
    pending = rt.redis.zcard(rt.keys.pending())
    reply = post(api, producer_token, realm, body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["errors"][0]["field"] == field
    assert rt.redis.zcard(rt.keys.pending()) <= pending  # the good events before the bad one were not queued


def test_tokens_scope_and_realm_are_checked(api: Any, realm: str, smtp_server: SmtpTestServer) -> None:
    from tests.support.http import new_token

    runtime().store.save(realm, smtp_server.settings_dict())
    event = {"type": "LOGIN", "userId": "u"}
    assert post(api, "not-a-token", realm, event).status_code == 401
    assert post(api, new_token("producer", ("other-realm",)), realm, event).status_code == 404
    assert post(api, new_token("admin"), realm, event).status_code == 202


def test_malformed_json_is_400(api: Any, producer_token: str, realm: str) -> None:
    with api.client(producer_token) as http:
        reply = http.post(f"/v1/realms/{realm}/keycloak-events", content=b"{not json",
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert reply.status_code == 400
    with api.client(producer_token) as http:
        reply = http.post(f"/v1/realms/{realm}/keycloak-events")
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == ""


# ---- the secret -------------------------------------------------------------------------------------------


def test_the_iam_client_secret_is_never_in_clear(
    api: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer, iam: KeycloakStub, real_redis: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from tests.conftest import SESSION_PREFIX
    from tests.test_oauth import _values
    from worker.cli import main

    caplog.set_level(logging.DEBUG)
    client = iam.client(realm)
    monkeypatch.setattr(sys, "stdin", io.StringIO(client.secret + "\n"))
    assert main(["settings", "save", "--realm", realm, "--from", "noreply@example.com", "--host", smtp_server.host,
                 "--port", str(smtp_server.port), "--iam-url", iam.url, "--iam-client-id", client.client_id,
                 "--iam-client-secret-stdin"]) == 0  # fmt: skip
    assert main(["settings", "show", "--realm", realm, "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out[out.index("{") :])
    assert shown["iam_client_secret"] == "**********" and shown["iam_client_id"] == client.client_id
    assert shown["iam_url"] == iam.url and shown["iam_realm"] is None
    user = iam.user(realm, email=address())
    reply = post(api, producer_token, realm, login_error(user["id"]))
    result = tasks_api.wait_for_result(the_job(reply))
    assert result["status"] == "sent"
    with api.client(producer_token) as http:
        status = http.get(f"/v1/jobs/{result['job_id']}").text
    tokens = list(iam.tokens)
    assert tokens  # the look-up did fetch a token
    secrets = [client.secret, *tokens]
    keys = list(real_redis.scan_iter(match=f"{SESSION_PREFIX}*", count=1000))
    stored = [value for key in keys for value in _values(real_redis, key)]
    assert any(key == runtime().keys.token(realm, "iam") for key in keys)  # the token is cached, encrypted
    texts = {"redis": "\n".join(stored), "cli": out + err, "http": reply.text + status,
             "results": json.dumps(result), "logs": caplog.text}  # fmt: skip
    assert [(where, s[:12]) for where, text in texts.items() for s in secrets if s in text] == []


def test_changing_iam_url_or_client_id_asks_for_the_secret_again(realm: str, smtp_server: SmtpTestServer,
                                                                 iam: KeycloakStub) -> None:  # fmt: skip
    from config.errors import InvalidInput

    client = iam.client(realm)
    save_with_iam(realm, smtp_server, iam, client)
    store = runtime().store
    for change in ({"iam_url": "http://127.0.0.1:9"}, {"iam_client_id": "someone-else"}):
        with pytest.raises(InvalidInput) as excinfo:
            store.save(realm, change)
        [(field, rule)] = excinfo.value.problems
        assert field == "iam_client_secret" and "enter the IAM client secret again" in rule
    # Fields the secret is not bound to change freely, the SMTP server's among them.
    with SmtpTestServer() as other:
        store.save(realm, {"port": other.port, "iam_realm": realm})
    store.save(realm, {"iam_url": "http://127.0.0.1:9", "iam_client_secret": client.secret})
    assert store.saved(realm).settings.iam_url == "http://127.0.0.1:9"


# ---- the directory on its own ------------------------------------------------------------------------------


def test_users_are_cached_briefly_in_a_bounded_cache(iam: KeycloakStub, realm: str,
                                                     smtp_server: SmtpTestServer) -> None:  # fmt: skip
    from worker.delivery.iam_users import UserDirectory

    now = [1000.0]
    directory = UserDirectory(runtime().oauth, ttl=60, max_users=2, clock=lambda: now[0])
    client = iam.client(realm)
    settings = smtp_server.settings(
        iam_url=iam.url, iam_client_id=client.client_id, iam_client_secret=client.secret
    )
    a, b, c = (iam.user(realm, email=address()) for _ in range(3))
    assert directory.user(realm, settings, a["id"]).email == a["email"]
    assert directory.user(realm, settings, a["id"]).email == a["email"]
    assert len(iam.lookups) == 1  # the second came from the cache
    now[0] += 61
    directory.user(realm, settings, a["id"])
    assert len(iam.lookups) == 2  # a minute later the IAM is asked again (a changed address shows)
    directory.user(realm, settings, b["id"])
    directory.user(realm, settings, c["id"])  # the oldest entry (a) goes: at most two are kept
    directory.user(realm, settings, c["id"])
    assert len(iam.lookups) == 4
    directory.user(realm, settings, a["id"])
    assert len(iam.lookups) == 5
    other = iam.client(realm)  # new settings: asked again, not answered from the old settings' cache
    changed = smtp_server.settings(
        iam_url=iam.url, iam_client_id=other.client_id, iam_client_secret=other.secret
    )
    directory.user(realm, changed, a["id"])
    assert len(iam.lookups) == 6
