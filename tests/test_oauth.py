"""XOAUTH2: access tokens from a real local token endpoint, sent to a real SMTP server that checks them.

The token endpoint is an http.server in a thread on 127.0.0.1 that checks the client-credentials form
(grant_type, client_id, client_secret, scope), issues the token the test chose, and can be slow or fail.
The SMTP server (aiosmtpd, StartTLS) accepts exactly one (user, token) pair, which a test can rotate.
Mail goes through the session's real Celery worker on the real Redis. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.fernet import Fernet

from config.crypto import SecretBox
from config.keys import Keys
from config.smtp import SmtpSettings, parse_smtp_settings
from tasks import api
from tasks.connection import connection_status
from tests.support.http_stub import JsonHandler, loopback_server
from tests.support.smtp_server import SmtpTestServer, closed_port
from worker.delivery.oauth import (
    TokenError,
    TokenNotReady,
    TokenProvider,
    endpoint_name,
    is_transient_status,
    lifetime,
)
from worker.runtime import runtime

pytestmark = pytest.mark.integration

USER = "mailer@acme.example"
SCOPE = "https://outlook.office365.com/.default"
CONTEXT = {"user": {"username": "alice", "email": "alice@example.com"}, "realm_name": "ACME",
           "link": "https://iam.example.com/verify?k=1", "link_expiration": 30}  # fmt: skip


# ---- a real token endpoint --------------------------------------------------------------------------------


@dataclass
class Client:
    """One OAuth2 client the endpoint knows. `token` is what it issues next; `mode` how it answers."""

    client_id: str
    secret: str
    token: str
    scope: str | None = SCOPE
    expires_in: Any = 3600
    mode: str = "ok"  # ok | slow | error500 | not-json | noisy (a huge error with escapes) | html502
    delay: float = 0.0
    requests: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class TokenEndpoint:
    """ThreadingHTTPServer on 127.0.0.1 answering the client-credentials grant at /tenant/oauth2/v2.0/token."""

    PATH = "/tenant/oauth2/v2.0/token"

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.problems: list[str] = []  # requests that broke the grant's rules (wrong method, content type)
        self._lock = threading.Lock()
        endpoint = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                endpoint.answer(self)

            def do_GET(self) -> None:
                endpoint.problems.append("GET")
                self.reply(405, {"error": "invalid_request", "error_description": "POST only"})

        self.server, self.thread = loopback_server(Handler, "token-endpoint")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.PATH}"

    def client(self, **options: Any) -> Client:
        tag = uuid.uuid4().hex[:8]
        options.setdefault("secret", f"cs-{uuid.uuid4().hex}")
        options.setdefault("token", new_token())
        client = Client(client_id=f"client-{tag}", **options)
        with self._lock:
            self.clients[client.client_id] = client
        return client

    def answer(self, handler: Any) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(handler.rfile.read(length).decode(), strict_parsing=True))
        if handler.path != self.PATH:
            handler.reply(404, {"error": "not_found"})
            return
        if handler.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            self.problems.append(f"content type {handler.headers.get('Content-Type')}")
        if form.get("grant_type") != "client_credentials":
            handler.reply(400, {"error": "unsupported_grant_type"})
            return
        with self._lock:
            client = self.clients.get(form.get("client_id", ""))
        if client is None or form.get("client_secret") != client.secret:
            handler.reply(401, {"error": "invalid_client", "error_description":
                                "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1f2e"})  # fmt: skip
            return
        with self._lock:
            client.requests += 1
        client.arrived.set()
        if form.get("scope") != client.scope:
            handler.reply(400, {"error": "invalid_scope", "error_description": f"scope {form.get('scope')}"})
            return
        if client.mode == "slow":
            client.release.wait(client.delay)
        if client.mode == "error500":
            handler.reply(500, {"error": "server_error", "error_description": "try again"})
            return
        if client.mode == "not-json":
            handler.reply(200, b"<html>sign in</html>")
            return
        if (
            client.mode == "noisy"
        ):  # echoes the secret, with terminal escapes, bidi overrides, and a lot of it
            description = (
                "\x1b[31mAADSTS\u202e" + "x" * 150 + form.get("client_secret", "") + "\r\n" + "y" * 9000
            )
            handler.reply(400, {"error": "weird_error\x1b[0m", "error_description": description})
            return
        if client.mode == "html502":
            body = "<html>\x1b]0;owned\x07<h1>Bad gateway</h1>" + form.get("client_secret", "") + "z" * 5000
            handler.reply(502, body.encode())
            return
        handler.reply(
            200, {"access_token": client.token, "token_type": "Bearer", "expires_in": client.expires_in}
        )

    def __enter__(self) -> TokenEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients.values():
            client.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def new_token() -> str:
    return f"at-{uuid.uuid4().hex}{uuid.uuid4().hex}"


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="starttls", xoauth2=(USER, "not-issued-yet")) as server:
        yield server


def oauth_dict(
    server: SmtpTestServer, endpoint: TokenEndpoint, client: Client, **overrides: Any
) -> dict[str, Any]:
    oauth = {
        "auth": True,
        "auth_type": "xoauth2",
        "username": USER,
        "oauth_token_url": endpoint.url,
        "oauth_client_id": client.client_id,
        "oauth_client_secret": client.secret,
        "oauth_scope": client.scope,
    }
    return server.settings_dict(**{**oauth, **overrides})


def accept(server: SmtpTestServer, client: Client) -> None:
    """The SMTP server accepts the token the endpoint issues next (and nothing else)."""
    server.xoauth2 = (USER, client.token)


def send(realm: str, to: str | None = None) -> str:
    return api.send_email(
        realm, "email-verification", to or f"u-{uuid.uuid4().hex[:8]}@example.com", context=CONTEXT
    )


# ---- the provider on its own -----------------------------------------------------------------------------


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([Fernet.generate_key().decode()])


def provider_for(real_redis: Any, key_prefix: str, box: SecretBox, **kwargs: Any) -> TokenProvider:
    kwargs.setdefault("allow_private", True)  # the test endpoint listens on 127.0.0.1
    return TokenProvider(real_redis, Keys(key_prefix), box, **kwargs)


def settings_for(endpoint: TokenEndpoint, client: Client, **overrides: Any) -> SmtpSettings:
    data = {"from": "noreply@acme.example", "host": "127.0.0.1", "port": 25, "starttls": True, "auth": True,
            "auth_type": "xoauth2", "username": USER, "oauth_token_url": endpoint.url,
            "oauth_client_id": client.client_id, "oauth_client_secret": client.secret, "oauth_scope": client.scope,
            "connect_timeout": 2, "timeout": 2}  # fmt: skip
    return parse_smtp_settings({**data, **overrides})


def test_one_fetch_is_shared_by_every_process_through_redis_encrypted(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    client = endpoint.client()
    settings = settings_for(endpoint, client)
    first = provider_for(real_redis, key_prefix, box)
    token = first.token(realm, settings)
    assert (token.value, token.fresh, client.requests) == (client.token, True, 1)
    assert first.token(realm, settings).value == client.token  # this process's cache
    other_process = provider_for(real_redis, key_prefix, box)
    shared = other_process.token(realm, settings)
    assert (shared.value, shared.fresh, client.requests) == (client.token, False, 1)
    raw = real_redis.get(Keys(key_prefix).token(realm))
    assert raw and client.token not in raw and client.secret not in raw
    assert json.loads(box.decrypt(raw))["token"] == client.token
    assert 3000 < real_redis.pttl(Keys(key_prefix).token(realm)) / 1000 <= lifetime(3600)
    assert endpoint.problems == []


def test_new_credentials_do_not_use_the_old_token(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    old, new = endpoint.client(), endpoint.client()
    provider = provider_for(real_redis, key_prefix, box)
    assert provider.token(realm, settings_for(endpoint, old)).value == old.token
    assert provider.token(realm, settings_for(endpoint, new)).value == new.token
    assert (
        provider_for(real_redis, key_prefix, box).token(realm, settings_for(endpoint, new)).value == new.token
    )
    assert (old.requests, new.requests) == (1, 1)


def test_a_token_is_refreshed_shortly_before_it_expires(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    now = [1_000_000.0]
    client = endpoint.client(expires_in="3600")  # some endpoints send a string
    provider = provider_for(real_redis, key_prefix, box, clock=lambda: now[0])
    settings = settings_for(endpoint, client)
    provider.token(realm, settings)
    now[0] += lifetime(3600) - 1  # 60 s margin: still used
    assert provider.token(realm, settings).fresh is False and client.requests == 1
    now[0] += 2
    client.token = new_token()
    assert provider.token(realm, settings).value == client.token and client.requests == 2
    assert lifetime(3600) == 3540 and lifetime(300) == 270 and lifetime(10) == 9


def test_invalidate_drops_only_the_rejected_token(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    client = endpoint.client()
    settings = settings_for(endpoint, client)
    provider = provider_for(real_redis, key_prefix, box)
    rejected = provider.token(realm, settings).value
    provider.invalidate(realm, "another-token")  # someone else's stale token: ours stays
    assert provider.token(realm, settings).value == rejected and client.requests == 1
    provider.invalidate(realm, rejected)
    client.token = new_token()
    assert provider.token(realm, settings).value == client.token and client.requests == 2


def test_while_one_process_fetches_others_fail_fast_and_other_realms_go_on(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox
) -> None:
    slow, quick = endpoint.client(mode="slow", delay=10), endpoint.client()
    slow_settings = settings_for(endpoint, slow, timeout=15)
    got: list[str] = []
    fetcher = threading.Thread(
        target=lambda: got.append(
            provider_for(real_redis, key_prefix, box).token("realm-a", slow_settings).value
        )
    )
    fetcher.start()
    try:
        assert slow.arrived.wait(5)
        started = time.monotonic()
        with pytest.raises(TokenNotReady) as caught:
            provider_for(real_redis, key_prefix, box).token("realm-a", slow_settings)
        assert caught.value.transient and "another worker is fetching" in str(caught.value)
        assert provider_for(real_redis, key_prefix, box).token("realm-b", settings_for(endpoint, quick)).value
        assert time.monotonic() - started < 1.0
    finally:
        slow.release.set()
        fetcher.join(10)
    assert got == [slow.token] and slow.requests == 1
    assert real_redis.get(Keys(key_prefix).token_lock("realm-a")) is None  # released


def test_a_hanging_endpoint_times_out_and_frees_the_lock(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    client = endpoint.client(mode="slow", delay=10)
    provider = provider_for(real_redis, key_prefix, box)
    started = time.monotonic()
    with pytest.raises(TokenError) as caught:
        provider.token(realm, settings_for(endpoint, client, timeout=0.5))
    assert time.monotonic() - started < 2.0
    assert caught.value.transient and "did not answer within" in str(caught.value)
    assert real_redis.get(Keys(key_prefix).token_lock(realm)) is None


@pytest.mark.parametrize(
    "case, transient, words",
    [
        ("wrong-secret", False, ["answered 401: invalid_client (AADSTS7000215: Invalid client secret provided. Trace ID: 1f2e)", "check oauth_client_id and oauth_client_secret"]),
        ("wrong-scope", False, ["answered 400: invalid_scope", "check oauth_scope"]),
        ("error500", True, ["answered 500: server_error", "retried later"]),
        ("not-json", False, ["answered 200 but not with a JSON object"]),
        ("wrong-path", False, ["answered 404"]),
        ("refused", True, ["refused the connection"]),
    ],
)  # fmt: skip
def test_token_failures_are_one_line_classified_and_never_show_the_secret(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str,
    case: str, transient: bool, words: list[str],
) -> None:  # fmt: skip
    client = endpoint.client(mode=case if case in ("error500", "not-json") else "ok")
    overrides: dict[str, Any] = {
        "wrong-secret": {"oauth_client_secret": client.secret + "-typo"},
        "wrong-scope": {"oauth_scope": "https://mail.example/.default"},
        "wrong-path": {"oauth_token_url": endpoint.url.replace("/token", "/tokens")},
        "refused": {"oauth_token_url": f"http://127.0.0.1:{closed_port()}/token"},
    }.get(case, {})
    settings = settings_for(endpoint, client, **overrides)
    with pytest.raises(TokenError) as caught:
        provider_for(real_redis, key_prefix, box).token(realm, settings)
    message = str(caught.value)
    assert caught.value.transient is transient
    assert all(word in message for word in words), message
    assert "\n" not in message and "\r" not in message
    assert client.secret not in message and (settings.secret("oauth_client_secret") or "") not in message
    assert real_redis.get(Keys(key_prefix).token(realm)) is None  # nothing cached


@pytest.mark.parametrize("mode, status", [("noisy", 400), ("html502", 502)])
def test_what_the_endpoint_says_is_shown_as_a_short_clean_excerpt(
    endpoint: TokenEndpoint,
    real_redis: Any,
    key_prefix: str,
    box: SecretBox,
    realm: str,
    mode: str,
    status: int,
) -> None:
    client = endpoint.client(mode=mode)
    with pytest.raises(TokenError) as caught:
        provider_for(real_redis, key_prefix, box).token(realm, settings_for(endpoint, client))
    message = str(caught.value)
    remote = message.split(f"answered {status}: ", 1)[1].removesuffix("; retried later")
    assert len(remote) <= 205, remote
    assert all(ch.isprintable() for ch in message), repr(message)
    assert client.secret[:6] not in message  # masked before it was cut: not even half of it
    assert ("weird_error" in remote) if mode == "noisy" else ("Bad gateway" in remote)


def test_a_token_url_on_this_machine_is_refused_without_the_private_url_setting(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    client = endpoint.client()
    strict = provider_for(real_redis, key_prefix, box, allow_private=False)
    with pytest.raises(TokenError) as caught:
        strict.token(realm, settings_for(endpoint, client))
    assert caught.value.transient is False
    assert str(caught.value) == (
        "oauth_token_url: host 127.0.0.1 is a loopback address: refused unless MAILWORKER_ALLOW_PRIVATE_URLS=1 "
        "(URLs in settings must not reach services inside the network)"
    )
    assert client.requests == 0
    allowed = provider_for(real_redis, key_prefix, box, allow_private=True)
    by_name = settings_for(endpoint, client, oauth_token_url=endpoint.url.replace("127.0.0.1", "localhost"))
    assert allowed.token(realm, by_name).value == client.token  # connected to the checked address


def test_a_name_is_checked_by_the_addresses_it_resolves_to_when_used(
    endpoint: TokenEndpoint, real_redis: Any, key_prefix: str, box: SecretBox, realm: str
) -> None:
    """A host name says nothing at save; what it resolves to is checked on every fetch."""
    name = socket.gethostname()
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except OSError:
        resolved = set()
    if resolved != {"127.0.0.1"} or name.endswith("localhost"):
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.0.0.1 only")
    client = endpoint.client()
    url = f"https://{name}:{endpoint.server.server_address[1]}{endpoint.PATH}"
    settings = settings_for(endpoint, client, oauth_token_url=url)
    with pytest.raises(TokenError) as caught:
        provider_for(real_redis, key_prefix, box, allow_private=False).token(realm, settings)
    assert str(caught.value).startswith(
        f"oauth_token_url: host {name.lower()} resolves to 127.0.0.1, which is a loopback address: refused"
    )
    assert caught.value.transient is False and client.requests == 0


def test_the_token_url_is_checked_at_save(real_redis: Any, key_prefix: str, box: SecretBox) -> None:
    from config.errors import InvalidInput
    from config.store import SettingsStore

    data = {"from": "noreply@acme.example", "host": "127.0.0.1", "port": 25, "starttls": True, "auth": True,
            "auth_type": "xoauth2", "username": USER, "oauth_client_id": "c", "oauth_client_secret": "s"}  # fmt: skip
    strict = SettingsStore(real_redis, Keys(key_prefix), box)
    with pytest.raises(
        InvalidInput, match="oauth_token_url: has a port that is not a whole number from 1 to 65535"
    ):
        strict.save("acme", {**data, "oauth_token_url": "https://login.example:99999/token"})
    with pytest.raises(InvalidInput, match=r"oauth_token_url: host 127\.0\.0\.1 is a loopback address"):
        strict.save("acme", {**data, "oauth_token_url": "http://127.0.0.1:8080/token"})
    with pytest.raises(InvalidInput, match="oauth_token_url: must be an https:// URL"):
        strict.save("acme", {**data, "oauth_token_url": "http://login.example/token"})
    assert strict.version("acme") == 0
    allowing = SettingsStore(real_redis, Keys(key_prefix), box, allow_private_urls=True)
    assert allowing.save("acme", {**data, "oauth_token_url": "http://127.0.0.1:8080/token"}).version == 1


@pytest.mark.parametrize("status, transient", [(400, False), (401, False), (403, False), (404, False),
                                               (408, True), (429, True), (500, True), (503, True)])  # fmt: skip
def test_which_http_statuses_are_worth_a_retry(status: int, transient: bool) -> None:
    assert is_transient_status(status) is transient


def test_error_messages_name_the_endpoint_without_credentials_or_query() -> None:
    assert endpoint_name("https://u:p@login.example.com:8443/t/oauth2/v2.0/token?k=v#x") == (
        "https://login.example.com:8443/t/oauth2/v2.0/token"
    )


# ---- through the worker ----------------------------------------------------------------------------------


@pytest.fixture
def _worker(celery_worker: Any) -> Any:
    return celery_worker


@pytest.mark.usefixtures("_worker")
def test_delivers_with_xoauth2_and_fetches_the_token_once(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any, real_redis: Any
) -> None:
    client = endpoint.client()
    accept(smtp, client)
    store.save(realm, oauth_dict(smtp, endpoint, client))  # the secret given in clear ...
    saved = real_redis.hget(runtime().keys.saved(realm), "data")
    assert client.secret not in saved and "oauth_client_secret_encrypted" in saved  # ... stored encrypted
    smtp.drop_after(1)  # every message on a new connection, so every message logs in with the token
    first, second = (api.wait_for_result(send(realm)) for _ in range(2))
    assert first["status"] == second["status"] == "sent"
    assert client.requests == 1  # the second message used the cached token
    assert [(a.mechanism, a.login, a.secret, a.success) for a in smtp.auth_attempts] == [
        ("XOAUTH2", USER, client.token, True)
    ] * 2
    assert len(smtp.messages) == 2 and all(m.tls for m in smtp.messages)


@pytest.mark.usefixtures("_worker")
def test_a_rejected_cached_token_is_refreshed_once_and_the_mail_goes_out(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client()
    accept(smtp, client)
    store.save(realm, oauth_dict(smtp, endpoint, client))
    smtp.drop_after(1)
    old = client.token
    assert api.wait_for_result(send(realm))["status"] == "sent"
    client.token = new_token()  # the server revoked the old token early; the endpoint issues a new one
    accept(smtp, client)
    result = api.wait_for_result(send(realm))
    assert result["status"] == "sent" and result["attempts"] == 1
    assert client.requests == 2
    assert [(a.secret, a.success) for a in smtp.auth_attempts] == [
        (old, True),
        (old, False),
        (client.token, True),
    ]


@pytest.mark.usefixtures("_worker")
def test_a_token_rejected_right_after_fetching_is_a_settings_problem(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client()  # the mailbox does not accept this app's tokens (no permission)
    store.save(realm, oauth_dict(smtp, endpoint, client))
    result = api.wait_for_result(send(realm))
    assert result["status"] == "dead-lettered" and result["reason"] == "settings"
    assert result["smtp_code"] == 535 and result["attempts"] == 1
    assert client.requests == 1 and len(smtp.auth_attempts) == 1  # no refresh loop with fresh tokens


@pytest.mark.usefixtures("_worker")
def test_invalid_client_is_dead_lettered_as_settings_without_a_retry_loop(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client()
    store.save(realm, oauth_dict(smtp, endpoint, client, oauth_client_secret="expired-" + client.secret))
    result = api.wait_for_result(send(realm))
    assert result["status"] == "dead-lettered" and result["reason"] == "settings" and result["attempts"] == 1
    assert "401: invalid_client" in result["error"] and "check oauth_client_id" in result["error"]
    letter = runtime().dead_letters.get(result["job_id"])
    assert letter.reason == "settings" and "invalid_client" in letter.error
    assert smtp.connections == 0  # no token, no SMTP connection


@pytest.mark.usefixtures("_worker")
def test_an_unreachable_endpoint_is_retried_then_delivers(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client(mode="error500")
    accept(smtp, client)
    store.save(realm, oauth_dict(smtp, endpoint, client))
    job_id = send(realm)
    wait_until(lambda: client.requests >= 2)
    client.mode = "ok"
    result = api.wait_for_result(job_id)
    assert result["status"] == "sent" and result["attempts"] >= 2 and client.requests == result["attempts"]


@pytest.mark.usefixtures("_worker")
def test_a_short_lived_token_is_fetched_again_after_it_expired(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client(expires_in=1)  # used for 0.9 s
    accept(smtp, client)
    store.save(realm, oauth_dict(smtp, endpoint, client))
    smtp.drop_after(1)
    assert api.wait_for_result(send(realm))["status"] == "sent"
    time.sleep(1.0)
    client.token = new_token()
    accept(smtp, client)
    assert api.wait_for_result(send(realm))["status"] == "sent"
    assert client.requests == 2
    assert [(a.secret, a.success) for a in smtp.auth_attempts][-1] == (client.token, True)


@pytest.mark.usefixtures("_worker")
def test_a_slow_token_endpoint_of_one_realm_does_not_delay_another_realms_mail(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, store: Any
) -> None:
    realm_a, realm_b = f"realm-a-{uuid.uuid4().hex[:8]}", f"realm-b-{uuid.uuid4().hex[:8]}"
    slow, quick = endpoint.client(mode="slow", delay=4), endpoint.client()
    store.save(realm_a, oauth_dict(smtp, endpoint, slow, timeout=10))
    accept(smtp, slow)
    with SmtpTestServer(tls="starttls", xoauth2=(USER, quick.token)) as other:
        store.save(realm_b, oauth_dict(other, endpoint, quick))
        job_a = send(realm_a, "a@example.com")
        assert slow.arrived.wait(5)  # a worker thread now waits for realm A's token
        started = time.monotonic()
        job_b = send(realm_b, "b@example.com")
        other.wait_for(1, timeout=2.0)
        assert time.monotonic() - started < 2.0 and not slow.release.is_set()
        assert api.wait_for_result(job_b)["status"] == "sent"
        # Realm A's next mail does not take a second slot waiting for the same token: it fails fast
        # ("token not ready") and is retried.
        job_a2 = send(realm_a, "a2@example.com")
        wait_until(lambda: runtime().services.ledger.attempts(job_a2) >= 2)
        assert not slow.release.is_set() and smtp.messages == []
        slow.release.set()  # the endpoint answers now
        assert api.wait_for_result(job_a, timeout=15)["status"] == "sent"
        assert api.wait_for_result(job_a2, timeout=15)["status"] == "sent"
    assert slow.requests == 1 and quick.requests == 1


@pytest.mark.usefixtures("_worker")
def test_test_connection_logs_in_with_a_fresh_token_and_reports_token_failures(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any
) -> None:
    client = endpoint.client()
    accept(smtp, client)
    store.save(realm, oauth_dict(smtp, endpoint, client))
    status = connection_status(realm)
    auth = next(stage for stage in status["stages"] if stage["name"] == "auth")
    assert status["ok"] is True and "XOAUTH2" in auth["detail"], status
    store.set_draft(realm, {"oauth_client_secret": "wrong-" + client.secret})
    status = connection_status(realm)
    assert status["ok"] is False and status["failed_stage"] == "auth" and status["kind"] == "token"
    assert "invalid_client" in status["error"] and "oauth_client_secret" in (status["hint"] or "")
    assert client.token not in json.dumps(status) and client.secret not in json.dumps(status)


def _values(client: Any, key: str) -> list[str]:
    kind = client.type(key)
    if kind == "string":  # read undecoded: bulk jobs keep bitmaps (binary) in strings
        raw = client.execute_command("GET", key, NEVER_DECODE=True)
        return [raw.decode("utf-8", "replace") if raw else ""]
    if kind == "hash":
        return [f"{k}={v}" for k, v in client.hgetall(key).items()]
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return client.zrange(key, 0, -1)
    return []


@pytest.mark.usefixtures("_worker")
def test_neither_the_client_secret_nor_a_token_is_ever_in_clear(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, real_redis: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from tests.conftest import SESSION_PREFIX
    from worker.cli import main

    caplog.set_level(logging.DEBUG)
    client = endpoint.client()
    accept(smtp, client)
    monkeypatch.setattr(sys, "stdin", io.StringIO(client.secret + "\n"))
    code = main(["settings", "save", "--realm", realm, "--from", "noreply@acme.example", "--host", smtp.host,
                 "--port", str(smtp.port), "--starttls", "--auth", "--auth-type", "xoauth2", "--username", USER,
                 "--oauth-token-url", endpoint.url, "--oauth-client-id", client.client_id,
                 "--oauth-scope", SCOPE, "--oauth-client-secret-stdin", "--timeout", "5"])  # fmt: skip
    assert code == 0
    assert main(["settings", "show", "--realm", realm, "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out[out.index("{") :])
    assert shown["auth_type"] == "xoauth2" and shown["oauth_client_id"] == client.client_id
    assert shown["oauth_client_secret"] == "**********"
    smtp.drop_after(1)
    tokens = [client.token]
    results = [api.wait_for_result(send(realm))]
    client.token = new_token()  # rejected cached token -> refresh
    tokens.append(client.token)
    accept(smtp, client)
    results.append(api.wait_for_result(send(realm)))
    assert [r["status"] for r in results] == ["sent", "sent"]
    wrong = "wrong-" + client.secret
    runtime().store.save(realm, {"oauth_client_secret": wrong})
    results.append(api.wait_for_result(send(realm)))
    assert results[-1]["reason"] == "settings"

    secrets = [client.secret, wrong, *tokens]
    keys = list(real_redis.scan_iter(match=f"{SESSION_PREFIX}*", count=1000))
    keys += [f"celery-task-meta-{r['job_id']}" for r in results]
    stored = [value for key in keys for value in _values(real_redis, key)]
    assert len(stored) > len(keys) / 2  # the scan did read the store, the broker and the results
    assert any(runtime().keys.token(realm) == key for key in keys)
    texts = {
        "redis": "\n".join(stored),
        "results": json.dumps(results),
        "cli": out + err,
        "logs": caplog.text,
    }
    assert "plain http" in caplog.text  # the worker's log records were captured
    leaks = [(where, s[:12]) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []


@pytest.mark.usefixtures("_worker")
def test_a_password_realm_moves_to_xoauth2_with_one_cli_command(
    endpoint: TokenEndpoint, smtp: SmtpTestServer, realm: str, store: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from worker.cli import main

    client = endpoint.client()
    accept(smtp, client)
    store.save(realm, smtp.settings_dict(auth=True, username=USER, password="old-app-password"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(client.secret + "\n"))
    code = main(["settings", "save", "--realm", realm, "--auth-type", "xoauth2", "--oauth-token-url", endpoint.url,
                 "--oauth-client-id", client.client_id, "--oauth-scope", SCOPE, "--oauth-client-secret-stdin"])  # fmt: skip
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    assert out == (
        f"saved {realm} version 2\nchanges:\n  auth_type: password -> xoauth2\n  password: ********** -> (not set)\n"
        f"  oauth_token_url: (not set) -> {endpoint.url}\n  oauth_client_id: (not set) -> {client.client_id}\n"
        f"  oauth_client_secret: (not set) -> **********\n  oauth_scope: (not set) -> {SCOPE}\n"
    )
    saved = store.saved(realm).settings
    assert saved.auth_type == "xoauth2" and saved.password is None  # the old password is forgotten
    assert api.wait_for_result(send(realm))["status"] == "sent"
    assert [(a.mechanism, a.success) for a in smtp.auth_attempts] == [("XOAUTH2", True)]
