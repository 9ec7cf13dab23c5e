"""OAuth2 access tokens by the client-credentials grant, cached per realm: for XOAUTH2 SMTP login, and
for the IAM's admin API (user look-ups, worker/delivery/iam_users.py).

    provider = TokenProvider(redis, keys, box)
    token = provider.token("acme", settings)        # AccessToken: cached, or fetched now
    open_session(settings, oauth_token=token.value)
    provider.invalidate("acme", token.value)        # after the SMTP server rejected it

A `Grant` says which endpoint, client and deadlines, and which settings fields errors name: `smtp_grant`
(the oauth_* fields) or `iam_grant` (worker/delivery/iam_users.py); a bare SmtpSettings means the SMTP one.

Caching: one token per realm and grant kind, in this process (a dict) and in Redis (`Keys.token(realm)`, encrypted with
the SecretBox, expiring with the token), so all worker processes share it. A token is used until shortly
before it expires (`margin`: 10% of its lifetime, at most 60 s). Each entry carries a fingerprint of the
token URL, client id, client secret and scope: saving new credentials makes the old token a miss.

Isolation: a slow token endpoint must hold up at most one worker slot per realm. Only the process that
wins the realm's fetch lock (`Keys.token_lock(realm)`, SET NX with a TTL) fetches; every other caller
gets `TokenNotReady` at once (a transient failure: the job is retried later) instead of waiting. Each fetch
has deadlines: connect (and TLS handshake) within the realm's connect_timeout, each read within its
timeout, the whole body within connect_timeout + timeout.

Where it may go: the token URL passes config.urls.check_public_url on every fetch (the operator may have
turned MAILWORKER_ALLOW_PRIVATE_URLS off since the save), and so does every address its host resolves
to; the connection then goes to exactly those checked addresses, so a name that resolves to a public
address for the check and to an internal one a moment later (DNS rebinding) gains nothing. Through a
proxy (HTTPS_PROXY) the proxy resolves the name: the local answer, when there is one, is checked.

Failures are `TokenError`s with one line a person can act on (HTTP status, the endpoint's `error` and
`error_description` as a short cleaned excerpt; never the client secret) and `transient`: unreachable,
timeout, 408, 429, 5xx are worth retrying; anything else (400/401 invalid_client, a wrong or refused URL,
not JSON) is a settings problem.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from config.crypto import SecretBox
from config.errors import ConfigError, InvalidInput, MailWorkerError
from config.keys import Keys
from config.smtp import SmtpSettings
from worker.delivery.oauth_http import (
    MAX_EXCERPT,
    Pinned,
    checked_destination,
    excerpt,
    network_reason,
    one_line,
    post_form,
)

log = logging.getLogger(__name__)

# A token is dropped this long before it expires: 10% of its lifetime, at most a minute, so a token that
# is still valid when a session starts is still valid when the server checks it.
MARGIN_FRACTION = 0.1
MAX_MARGIN_S = 60.0
# RFC 6749 only recommends expires_in; without it, assume a short life rather than a long one.
DEFAULT_EXPIRES_IN_S = 300
# The fetch lock outlives the slowest fetch (connect + a few reads) by this much, then frees itself
# even when its holder died.
LOCK_SLACK_S = 5.0
TRANSIENT_STATUSES = frozenset({408, 429})
# What to check for the endpoint's `error` codes (RFC 6749 5.2); {names} are the grant's settings fields.
ERROR_HINTS = {
    "invalid_client": "check {client_id} and {client_secret}",
    # Keycloak says this for a wrong client secret too ("Invalid client or Invalid client credentials").
    "unauthorized_client": "check {client_id} and {client_secret}, and the tenant in {url} (the client "
    "must be allowed the client-credentials grant)",
    "invalid_scope": "check {scope}",
    "invalid_request": "check {url}, {client_id} and {scope}",
    "unsupported_grant_type": "the endpoint does not offer the client-credentials grant",
}
SMTP_NAMES = {"url": "oauth_token_url", "client_id": "oauth_client_id",
              "client_secret": "oauth_client_secret", "scope": "oauth_scope"}  # fmt: skip
_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class TokenError(MailWorkerError):
    """No access token. `transient`: worth retrying later; otherwise the realm's settings are wrong."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class TokenNotReady(TokenError):
    """Another worker is fetching the realm's token right now: try again shortly, do not wait."""

    def __init__(self, realm: str) -> None:
        super().__init__(
            f"realm {realm}: another worker is fetching the OAuth2 access token right now; retried shortly",
            transient=True,
        )


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # wall-clock time after which it is not used any more (margin already taken off)
    fingerprint: str = field(repr=False)
    fresh: bool = field(default=False, compare=False)  # fetched by this call (not from a cache)

    def usable(self, fingerprint: str, now: float) -> bool:
        return self.fingerprint == fingerprint and now < self.expires_at


@dataclass(frozen=True)
class Grant:
    """One client-credentials grant: the endpoint, the client, the deadlines, the words of its errors."""

    kind: str  # "smtp" | "iam": its cache entry and fetch lock (config/keys.py)
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None
    connect_timeout: float
    timeout: float
    label: str = "OAuth2 token endpoint"  # what errors call the endpoint
    names: Mapping[str, str] = field(default_factory=lambda: SMTP_NAMES)  # settings fields errors name

    @property
    def field(self) -> str:
        return self.names["url"]


def smtp_grant(settings: SmtpSettings) -> Grant:
    """The XOAUTH2 grant of a realm's settings (the oauth_* fields)."""
    return Grant("smtp", settings.oauth_token_url or "", settings.oauth_client_id or "",
                 settings.secret("oauth_client_secret") or "", settings.oauth_scope, settings.connect_timeout,
                 settings.timeout)  # fmt: skip


def uses_xoauth2(settings: SmtpSettings) -> bool:
    return settings.auth and settings.auth_type == "xoauth2"


def fingerprint(grant: Grant) -> str:
    """What a cached token is bound to; kept in memory and inside the encrypted cache entry only."""
    parts = (grant.token_url, grant.client_id, grant.client_secret, grant.scope)
    return hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()


def lifetime(expires_in: float) -> float:
    """Seconds a token with `expires_in` is used: its lifetime minus the safety margin."""
    return expires_in - min(MAX_MARGIN_S, expires_in * MARGIN_FRACTION)


def endpoint_name(url: str) -> str:
    """The URL without user info, query and fragment: safe for an error message."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUSES


# ---- the provider --------------------------------------------------------------------------------------


class TokenProvider:
    """Access tokens per realm: from this process's cache, Redis, or the token endpoint (one fetcher)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        keys: Keys,
        box: SecretBox,
        *,
        allow_private: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self._keys = keys
        self._box = box
        self._allow_private = allow_private  # MAILWORKER_ALLOW_PRIVATE_URLS
        self._clock = clock
        self._local: dict[tuple[str, str], AccessToken] = {}  # (kind, realm) -> token
        self._release = redis_client.register_script(_RELEASE_LOCK)

    def token(self, realm: str, settings: SmtpSettings | Grant) -> AccessToken:
        """A usable token for the realm's grant. Raises TokenError (TokenNotReady while another fetches)."""
        grant = settings if isinstance(settings, Grant) else smtp_grant(settings)
        wanted, slot = fingerprint(grant), (grant.kind, realm)
        cached = self._local.get(slot)
        if cached is not None and cached.usable(wanted, self._clock()):
            return cached
        shared = self._read_shared(realm, grant.kind, wanted)
        if shared is not None:
            self._local[slot] = shared
            return shared
        lock_key, owner = self._keys.token_lock(realm, grant.kind), uuid.uuid4().hex
        lock_ms = math.ceil((grant.connect_timeout + 2 * grant.timeout + LOCK_SLACK_S) * 1000)
        if not self._redis.set(lock_key, owner, nx=True, px=lock_ms):
            raise TokenNotReady(realm)
        try:
            shared = self._read_shared(
                realm, grant.kind, wanted
            )  # another process may have finished just now
            if shared is None:
                fetched = self.fetch(grant)
                self._write_shared(realm, grant.kind, fetched)
                self._local[slot] = replace(fetched, fresh=False)  # later callers get a cached token
                return fetched
            self._local[slot] = shared
            return shared
        finally:
            self._release(keys=[lock_key], args=[owner])

    def invalidate(self, realm: str, rejected: str | None = None, kind: str = "smtp") -> None:
        """Forget the realm's token (the server rejected `rejected`; None: whatever is cached).

        The shared entry is deleted only while it still holds the rejected token: another process may
        have put a fresh one there meanwhile.
        """
        cached = self._local.get((kind, realm))
        if cached is not None and (rejected is None or cached.value == rejected):
            self._local.pop((kind, realm), None)
        key = self._keys.token(realm, kind)
        shared = self._decode(self._redis.get(key))
        if shared is None or rejected is None or shared.value == rejected:
            self._redis.delete(key)

    def probe_token(self, settings: SmtpSettings) -> str:
        """A token fetched now, for Test Connection: proves the credentials, leaves the caches alone."""
        return self.fetch(settings).value

    def fetch(self, settings: SmtpSettings | Grant) -> AccessToken:
        """The client-credentials grant (RFC 6749 4.4), client authenticated in the form body."""
        grant = settings if isinstance(settings, Grant) else smtp_grant(settings)
        url, secret = grant.token_url, grant.client_secret
        where = endpoint_name(url)
        pinned = self.destination(grant.field, url, grant)
        form = {"grant_type": "client_credentials", "client_id": grant.client_id, "client_secret": secret}
        if grant.scope:
            form["scope"] = grant.scope
        if url.startswith("http://"):
            log.warning("%s %s is plain http: the client secret travels unencrypted", grant.label, where)
        try:
            status, body = post_form(url, form, pinned=pinned, connect_timeout=grant.connect_timeout,
                                     timeout=grant.timeout)  # fmt: skip
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise self._network_error(network_reason(error), where, grant) from None
        if status != 200:
            raise _scrub(self._http_error(status, body, where, grant), secret)
        return self._parse(body, where, grant, fingerprint(grant))

    def destination(self, field_name: str, url: str, grant: Grant) -> Pinned:
        """Check a URL and the addresses its host resolves to (oauth_http.checked_destination); what to
        connect to. Failures are TokenErrors in `grant`'s words (the admin API's URL uses it too)."""
        try:
            return checked_destination(field_name, url, allow_private=self._allow_private)
        except InvalidInput as error:
            raise TokenError(str(error), transient=False) from None
        except socket.gaierror as error:
            raise self._network_error(error, endpoint_name(url), grant) from None

    # ---- internals ------------------------------------------------------------------------------------

    def _read_shared(self, realm: str, kind: str, wanted: str) -> AccessToken | None:
        token = self._decode(self._redis.get(self._keys.token(realm, kind)))
        return token if token is not None and token.usable(wanted, self._clock()) else None

    def _write_shared(self, realm: str, kind: str, token: AccessToken) -> None:
        ttl_ms = int((token.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        entry = {"token": token.value, "expires_at": token.expires_at, "fingerprint": token.fingerprint}
        self._redis.set(self._keys.token(realm, kind), self._box.encrypt(json.dumps(entry)), px=ttl_ms)

    def _decode(self, raw: Any) -> AccessToken | None:
        if raw is None:
            return None
        try:
            entry = json.loads(self._box.decrypt(raw if isinstance(raw, str) else raw.decode()))
            return AccessToken(str(entry["token"]), float(entry["expires_at"]), str(entry["fingerprint"]))
        except (ConfigError, ValueError, KeyError, TypeError):
            return None  # encrypted with a key dropped since, or unreadable: fetch a new one

    def _parse(self, body: bytes, where: str, grant: Grant, bound_to: str) -> AccessToken:
        secret, label = grant.client_secret, grant.label
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenError(
                f"{label} {where} answered 200 but not with a JSON object: is {grant.field} right?",
                transient=False,
                status=200,
            )
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(f"{label} {where} answered without an access_token", transient=False, status=200)
        token_type = data.get("token_type")
        if token_type is not None and str(token_type).lower() != "bearer":
            raise _scrub(TokenError(
                f"{label} {where} issued a {one_line(str(token_type), 40)} token; a Bearer token is needed",
                transient=False, status=200,
            ), secret)  # fmt: skip
        try:
            expires_in = float(data.get("expires_in", DEFAULT_EXPIRES_IN_S))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN_S
        if not math.isfinite(expires_in) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN_S
        return AccessToken(value, self._clock() + lifetime(expires_in), bound_to, fresh=True)

    def _http_error(self, status: int, body: bytes, where: str, grant: Grant) -> TokenError:
        secret, label = grant.client_secret, grant.label
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        detail = ""
        hint = ""
        if isinstance(data, dict) and data.get("error"):
            code = excerpt(str(data["error"]), [secret], 60)
            detail = f": {code}"
            if data.get("error_description"):
                detail += f" ({excerpt(str(data['error_description']), [secret], MAX_EXCERPT - len(code))})"
            hint = ERROR_HINTS.get(code, "").format_map(grant.names)
        elif body.strip():
            detail = f": {excerpt(body.decode('utf-8', 'replace'), [secret])}"
        transient = is_transient_status(status)
        if not hint and not transient:
            hint = f"check {grant.field}" if status in (404, 405) or 300 <= status < 400 else ""
        if transient:
            hint = "retried later"
        message = f"{label} {where} answered {status}{detail}"
        return TokenError(message + (f"; {hint}" if hint else ""), transient=transient, status=status)

    def _network_error(self, reason: BaseException, where: str, grant: Grant) -> TokenError:
        label = grant.label
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = reason.verify_message or reason.reason or str(reason)
            return TokenError(f"{label} {where}: certificate verify failed: {detail}", transient=False)
        if isinstance(reason, TimeoutError):
            return TokenError(
                f"{label} {where} did not answer within {grant.connect_timeout:g}s "
                f"(connect) / {grant.timeout:g}s (timeout); retried later",
                transient=True,
            )
        if isinstance(reason, ConnectionRefusedError):
            return TokenError(f"{label} {where} refused the connection; retried later", transient=True)
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(grant.token_url).hostname
            return TokenError(
                f"cannot resolve {host} ({grant.field}): {reason.strerror}; retried later", transient=True
            )
        if isinstance(reason, ValueError):  # an oversized or otherwise unusable response
            return TokenError(f"{label} {where}: {one_line(str(reason))}", transient=False)
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return TokenError(f"{label} {where}: {one_line(detail)}; retried later", transient=True)


def _scrub(error: TokenError, secret: str) -> TokenError:
    """Belt and braces: an endpoint echoing the client secret must not put it into a log line."""
    text = str(error)
    if len(secret) < 4 or secret not in text:
        return error
    return TokenError(text.replace(secret, "**********"), transient=error.transient, status=error.status)
