"""A stand-in for Keycloak's token endpoint and admin REST API, on 127.0.0.1, with Keycloak's JSON shapes.

    with KeycloakStub() as iam:
        client = iam.client("acme")                       # a service-account client of realm acme
        user = iam.user("acme", email="alice@example.com", locale="de")
        settings = {..., "iam_url": iam.url, "iam_client_id": client.client_id,
                    "iam_client_secret": client.secret}

Serves
- `POST /realms/{realm}/protocol/openid-connect/token`: the client-credentials grant (form body), checked
  like Keycloak does (401 `invalid_client` for a wrong secret), `expires_in` as the test chooses;
- `GET /admin/realms/{realm}/users/{id}`: a UserRepresentation (id, username, email, emailVerified,
  firstName, lastName, attributes {locale: [..]}); 401 without a token this stub issued for that realm,
  404 `{"error": "User not found"}` for an unknown id.

`mode` makes the admin API (or the token endpoint, `token_mode`) answer 500, 403 or slowly. It counts
token requests and user look-ups, and records the Authorization header of each look-up.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.http_stub import JsonHandler, loopback_server

_TOKEN = re.compile(r"^/realms/([^/]+)/protocol/openid-connect/token$")
_USER = re.compile(r"^/admin/realms/([^/]+)/users/([^/?]+)$")


@dataclass
class StubClient:
    realm: str
    client_id: str
    secret: str = field(repr=False)


@dataclass
class KeycloakStub:
    expires_in: int = 300
    mode: str = "ok"  # admin API: ok | error500 | forbidden | slow
    token_mode: str = "ok"  # token endpoint: ok | error500
    delay: float = 0.0  # for slow
    token_requests: int = 0
    lookups: list[tuple[str, str, str]] = field(default_factory=list)  # (realm, user id, Authorization)
    clients: dict[str, StubClient] = field(default_factory=dict)
    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # issued token -> realm
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        stub = self
        self._lock = threading.Lock()

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                stub.token(self)

            def do_GET(self) -> None:
                stub.get_user(self)

        self.server, self.thread = loopback_server(Handler, "keycloak-stub")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # ---- what the test sets up -------------------------------------------------------------------------

    def client(self, realm: str) -> StubClient:
        client = StubClient(realm, f"mailer-{uuid.uuid4().hex[:8]}", f"kc-secret-{uuid.uuid4().hex}")
        with self._lock:
            self.clients[client.client_id] = client
        return client

    def user(
        self, realm: str, *, email: str | None, locale: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        user_id = str(uuid.uuid4())
        user = {"id": user_id, "username": fields.pop("username", f"user-{user_id[:6]}"), "enabled": True,
                "emailVerified": email is not None, "firstName": fields.pop("firstName", "Alice"),
                "lastName": fields.pop("lastName", "Liddell"), "createdTimestamp": 1764000000000,
                "attributes": {"locale": [locale]} if locale else {}, **fields}  # fmt: skip
        if email is not None:
            user["email"] = email
        with self._lock:
            self.users[(realm, user_id)] = user
        return user

    # ---- the endpoints ---------------------------------------------------------------------------------

    def token(self, handler: Any) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(handler.rfile.read(length).decode()))
        match = _TOKEN.match(handler.path)
        if match is None:
            handler.reply(404, {"error": "RESTEASY003210: Could not find resource for full path"})
            return
        realm = urllib.parse.unquote(match.group(1))
        with self._lock:
            self.token_requests += 1
            client = self.clients.get(form.get("client_id", ""))
        if self.token_mode == "error500":
            handler.reply(500, {"error": "unknown_error"})
            return
        if form.get("grant_type") != "client_credentials":
            handler.reply(400, {"error": "unsupported_grant_type"})
            return
        if client is None or client.realm != realm or form.get("client_secret") != client.secret:
            handler.reply(401, {"error": "unauthorized_client",
                                "error_description": "Invalid client or Invalid client credentials"})  # fmt: skip
            return
        value = f"eyJ-{uuid.uuid4().hex}"
        with self._lock:
            self.tokens[value] = realm
        handler.reply(200, {"access_token": value, "expires_in": self.expires_in, "refresh_expires_in": 0,
                            "token_type": "Bearer", "not-before-policy": 0, "scope": "profile email"})  # fmt: skip

    def get_user(self, handler: Any) -> None:
        match = _USER.match(handler.path)
        if match is None:
            handler.reply(404, {"error": "RESTEASY003210: Could not find resource for full path"})
            return
        realm, user_id = (urllib.parse.unquote(part) for part in match.groups())
        authorization = handler.headers.get("Authorization") or ""
        with self._lock:
            self.lookups.append((realm, user_id, authorization))
        if self.mode == "slow":
            self.release.wait(self.delay)
        if self.mode == "error500":
            handler.reply(500, {"error": "unknown_error"})
            return
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or self.tokens.get(token) != realm:
            handler.reply(401, {"error": "HTTP 401 Unauthorized"})
            return
        if self.mode == "forbidden":
            handler.reply(403, {"error": "HTTP 403 Forbidden"})
            return
        user = self.users.get((realm, user_id))
        if user is None:
            handler.reply(404, {"error": "User not found"})
            return
        handler.reply(200, user)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def __enter__(self) -> KeycloakStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
