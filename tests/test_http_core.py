"""The HTTP API's core on a real server: tokens, scopes, realms, errors, limits, headers, /healthz."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from worker.http.guards import body_limit_for, client_address, parse_networks
from worker.http.tokens import TokenStore, digest_of
from worker.runtime import runtime

pytestmark = pytest.mark.integration

CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}


def email(to: str = "alice@example.com") -> dict[str, Any]:
    return {"template": "password-reset", "to": to, "context": CONTEXT}


def test_healthz_needs_no_token_and_says_what_answers(api: ApiServer) -> None:
    reply = api.client().get("/healthz")
    assert (reply.status_code, reply.json()) == (200, {"redis": "ok", "broker": "ok"})
    for name, value in (("x-frame-options", "DENY"), ("x-content-type-options", "nosniff")):
        assert reply.headers[name] == value
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert "access-control-allow-origin" not in reply.headers


def test_a_token_is_stored_only_as_its_hash_and_revoking_it_ends_it(api: ApiServer, realm: str) -> None:
    rt = runtime()
    store = TokenStore(rt.redis, rt.keys)
    created = store.create("producer", [realm], "a test")
    everything = {k: rt.redis.hgetall(k) if rt.redis.type(k) == "hash" else None
                  for k in rt.redis.scan_iter(match=f"{rt.keys.prefix}:api:*")}  # fmt: skip
    assert created.token not in repr(everything) and rt.keys.api_token(digest_of(created.token)) in everything
    assert len(created.token) == len("mwt_") + 43
    with api.client(created.token) as client:
        assert client.get("/v1/jobs/x").status_code == 404  # authenticated: the job is unknown
        store.revoke(created.record.id)
        assert client.get("/v1/jobs/x").status_code == 401


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer mwt_nope", "Basic dXNlcjpwYXNz", "bearer x y", "mwt_x"]
)
def test_without_a_valid_token_it_is_401(api: ApiServer, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    reply = api.client().post("/v1/realms/acme/emails", json=email(), headers=headers)
    assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
    assert set(reply.json()) == {"error"}


def test_a_realm_outside_the_tokens_realms_is_not_found_like_one_that_does_not_exist(
    api: ApiServer, celery_worker: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    token = new_token("producer", (realm,))
    other = f"{realm}-other"
    runtime().store.save(other, smtp_server.settings_dict())
    with api.client(token) as client:
        sent = client.post(f"/v1/realms/{realm}/emails", json=email())
        assert sent.status_code == 202, sent.text
        hidden = client.post(f"/v1/realms/{other}/emails", json=email())
        missing = client.post(f"/v1/realms/{realm}-none/emails", json=email())
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"].replace(other, "R") == missing.json()["error"].replace(
            f"{realm}-none", "R"
        )
    with api.client(new_token("producer", (other,))) as client:
        assert client.get(f"/v1/jobs/{sent.json()['job_id']}").status_code == 404  # another realm's job


def test_bad_input_is_422_naming_the_field_with_the_python_apis_rule(
    api: ApiServer, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    from config.errors import InvalidInput
    from tasks import api as python_api

    runtime().store.save(realm, smtp_server.settings_dict())
    with pytest.raises(InvalidInput) as raised:
        python_api.send_email(realm, "password-reset", "not an address", context=CONTEXT)
    with api.client(producer_token) as client:
        reply = client.post(f"/v1/realms/{realm}/emails", json=email("not an address"))
        assert reply.status_code == 422
        assert reply.json() == {"errors": [{"field": f, "rule": r} for f, r in raised.value.problems]}
        extra = client.post(f"/v1/realms/{realm}/emails", json={**email(), "cc": "x"})
        assert extra.json() == {"errors": [{"field": "cc", "rule": "is not a field"}]}
        missing = client.post(f"/v1/realms/{realm}/emails", json={"to": "a@example.com"})
        assert missing.json() == {"errors": [{"field": "template", "rule": "is required"}]}
        not_json = client.post(f"/v1/realms/{realm}/emails", content=b"{nope",
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert not_json.status_code == 400
        big = client.post(f"/v1/realms/{realm}/emails", content=b"[" + b"1," * 600_000 + b"1]",
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert big.status_code == 413
        bad_realm = client.post("/v1/realms/..%2Fetc/emails", json=email())
        assert bad_realm.status_code in (404, 422)


def test_an_idempotency_key_header_sends_once(
    api: ApiServer, celery_worker: Any, producer_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    to = f"idem-{uuid.uuid4().hex[:8]}@example.com"
    with api.client(producer_token) as client:
        ids = {client.post(f"/v1/realms/{realm}/emails", json=email(to),
                           headers={"Idempotency-Key": "reset-1"}).json()["job_id"] for _ in range(3)}  # fmt: skip
        [job_id] = ids
        from tasks import api as python_api

        assert python_api.wait_for_result(job_id)["status"] == "sent"
        status = client.get(f"/v1/jobs/{job_id}").json()
    # Published once per request (none was delivered yet), delivered once: the later runs skip it.
    assert status["status"] in ("sent", "duplicate-skipped") and status["realm"] == realm
    assert len(smtp_server.received_for(to)) == 1


def forget_failed_authentications() -> None:
    rt = runtime()
    for key in rt.redis.scan_iter(match=rt.keys.auth_failures("*")):
        rt.redis.delete(key)


def test_failed_authentications_are_limited_per_client_address(api: ApiServer, monkeypatch: Any) -> None:
    forget_failed_authentications()  # every test calls from 127.0.0.1: start from none
    context = api.app.state.context
    monkeypatch.setattr(context.settings, "http_auth_failures_per_minute", 3)
    with api.client("mwt_wrong") as client:
        codes = [client.get("/v1/jobs/x").status_code for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    # Redis remembers per address and minute: a valid token from this address waits too.
    with api.client(new_token("producer")) as client:
        assert client.get("/v1/jobs/x").status_code == 429
    forget_failed_authentications()


@pytest.mark.parametrize(
    "method, path, limit",
    [("POST", "/v1/realms/acme/bulk", 2), ("POST", "/v1/realms/acme/bulk/", 2), ("GET", "/v1/realms/acme/bulk", 1),
     ("POST", "/v1/realms/acme/emails", 1), ("POST", "/v1/realms/bulk", 1), ("POST", "/bulk", 1)],
)  # fmt: skip
def test_body_limit_for(method: str, path: str, limit: int) -> None:
    assert body_limit_for(method, path, 1, 2) == limit


@pytest.mark.parametrize(
    "peer, forwarded, trusted, client",
    [
        ("203.0.113.9", None, "", "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "", "203.0.113.9"),  # not a trusted proxy: its header is ignored
        ("10.0.0.2", "198.51.100.1", "10.0.0.0/8", "198.51.100.1"),
        (
            "10.0.0.2",
            "198.51.100.7, 198.51.100.1, 10.0.0.3",
            "10.0.0.0/8",
            "198.51.100.1",
        ),  # the last untrusted
        ("10.0.0.2", "10.0.0.5", "10.0.0.0/8", "10.0.0.2"),  # only proxies: the peer
        ("10.0.0.2", "not-an-ip", "10.0.0.0/8", "10.0.0.2"),
        (None, None, "", "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, trusted: str, client: str) -> None:
    assert client_address(peer, forwarded, parse_networks(trusted)) == client
