"""OAuth2 access tokens for XOAUTH2 SMTP login: the client-credentials grant, cached per realm.

    provider = TokenProvider(redis, keys, box)
    token = provider.token("acme", settings)        # AccessToken: cached, or fetched now
    open_session(settings, oauth_token=token.value)
    provider.invalidate("acme", token.value)        # after the SMTP server rejected it

Caching: one token per realm, in this process (a dict) and in Redis (`Keys.token(realm)`, encrypted with
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from config.crypto import SecretBox
from config.errors import ConfigError, InvalidInput, MailWorkerError
from config.keys import Keys
from config.smtp import SmtpSettings
from config.urls import ParsedUrl, check_public_url, check_resolved
from worker.delivery.oauth_http import (
    MAX_EXCERPT,
    Pinned,
    excerpt,
    network_reason,
    one_line,
    post_form,
    proxy_for,
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
# What to check for the endpoint's `error` codes (RFC 6749 5.2).
ERROR_HINTS = {
    "invalid_client": "check oauth_client_id and oauth_client_secret",
    "unauthorized_client": "check oauth_client_id and the tenant in oauth_token_url (the client must be "
    "allowed the client-credentials grant)",
    "invalid_scope": "check oauth_scope",
    "invalid_request": "check oauth_token_url, oauth_client_id and oauth_scope",
    "unsupported_grant_type": "the endpoint does not offer the client-credentials grant",
}
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


def uses_xoauth2(settings: SmtpSettings) -> bool:
    return settings.auth and settings.auth_type == "xoauth2"


def fingerprint(settings: SmtpSettings) -> str:
    """What a cached token is bound to; kept in memory and inside the encrypted cache entry only."""
    parts = (
        settings.oauth_token_url,
        settings.oauth_client_id,
        settings.secret("oauth_client_secret"),
        settings.oauth_scope,
    )
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
        self._local: dict[str, AccessToken] = {}
        self._release = redis_client.register_script(_RELEASE_LOCK)

    def token(self, realm: str, settings: SmtpSettings) -> AccessToken:
        """A usable token for the realm's settings. Raises TokenError (TokenNotReady while another fetches)."""
        wanted = fingerprint(settings)
        cached = self._local.get(realm)
        if cached is not None and cached.usable(wanted, self._clock()):
            return cached
        shared = self._read_shared(realm, wanted)
        if shared is not None:
            self._local[realm] = shared
            return shared
        lock_key, owner = self._keys.token_lock(realm), uuid.uuid4().hex
        lock_ms = math.ceil((settings.connect_timeout + 2 * settings.timeout + LOCK_SLACK_S) * 1000)
        if not self._redis.set(lock_key, owner, nx=True, px=lock_ms):
            raise TokenNotReady(realm)
        try:
            shared = self._read_shared(realm, wanted)  # another process may have finished just now
            if shared is None:
                fetched = self.fetch(settings)
                self._write_shared(realm, fetched)
                self._local[realm] = replace(fetched, fresh=False)  # later callers get a cached token
                return fetched
            self._local[realm] = shared
            return shared
        finally:
            self._release(keys=[lock_key], args=[owner])

    def invalidate(self, realm: str, rejected: str | None = None) -> None:
        """Forget the realm's token (the SMTP server rejected `rejected`; None: whatever is cached).

        The shared entry is deleted only while it still holds the rejected token: another process may
        have put a fresh one there meanwhile.
        """
        cached = self._local.get(realm)
        if cached is not None and (rejected is None or cached.value == rejected):
            self._local.pop(realm, None)
        key = self._keys.token(realm)
        shared = self._decode(self._redis.get(key))
        if shared is None or rejected is None or shared.value == rejected:
            self._redis.delete(key)

    def probe_token(self, settings: SmtpSettings) -> str:
        """A token fetched now, for Test Connection: proves the credentials, leaves the caches alone."""
        return self.fetch(settings).value

    def fetch(self, settings: SmtpSettings) -> AccessToken:
        """The client-credentials grant (RFC 6749 4.4), client authenticated in the form body."""
        url = settings.oauth_token_url or ""
        secret = settings.secret("oauth_client_secret") or ""
        where = endpoint_name(url)
        pinned = self._destination(url, settings)
        form = {"grant_type": "client_credentials", "client_id": settings.oauth_client_id or "",
                "client_secret": secret}  # fmt: skip
        if settings.oauth_scope:
            form["scope"] = settings.oauth_scope
        if url.startswith("http://"):
            log.warning(
                "OAuth2 token endpoint %s is plain http: the client secret travels unencrypted", where
            )
        try:
            status, body = post_form(url, form, pinned=pinned, connect_timeout=settings.connect_timeout,
                                     timeout=settings.timeout)  # fmt: skip
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise self._network_error(network_reason(error), where, settings) from None
        if status != 200:
            raise _scrub(self._http_error(status, body, where, secret), secret)
        return self._parse(body, where, secret, fingerprint(settings))

    # ---- internals ------------------------------------------------------------------------------------

    def _destination(self, url: str, settings: SmtpSettings) -> Pinned:
        """Check the token URL and the addresses its host resolves to; what to connect to (nothing pinned
        when a proxy connects for us)."""
        try:
            parsed: ParsedUrl = check_public_url("oauth_token_url", url, allow_private=self._allow_private)
        except InvalidInput as error:
            raise TokenError(str(error), transient=False) from None
        proxy = proxy_for(url, parsed.host)
        try:
            infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            if proxy is not None:  # the proxy may know names this machine's DNS does not
                return {}
            raise self._network_error(error, endpoint_name(url), settings) from None
        except UnicodeError:
            raise TokenError(
                f"oauth_token_url: {parsed.host} is not a valid host name", transient=False
            ) from None
        try:
            check_resolved("oauth_token_url", url, [str(info[4][0]) for info in infos],
                           allow_private=self._allow_private)  # fmt: skip
        except InvalidInput as error:
            raise TokenError(str(error), transient=False) from None
        if proxy is not None:
            return {}
        return {(parsed.host.lower(), parsed.port): [(info[0], info[4]) for info in infos]}

    def _read_shared(self, realm: str, wanted: str) -> AccessToken | None:
        token = self._decode(self._redis.get(self._keys.token(realm)))
        return token if token is not None and token.usable(wanted, self._clock()) else None

    def _write_shared(self, realm: str, token: AccessToken) -> None:
        ttl_ms = int((token.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        entry = {"token": token.value, "expires_at": token.expires_at, "fingerprint": token.fingerprint}
        self._redis.set(self._keys.token(realm), self._box.encrypt(json.dumps(entry)), px=ttl_ms)

    def _decode(self, raw: Any) -> AccessToken | None:
        if raw is None:
            return None
        try:
            entry = json.loads(self._box.decrypt(raw if isinstance(raw, str) else raw.decode()))
            return AccessToken(str(entry["token"]), float(entry["expires_at"]), str(entry["fingerprint"]))
        except (ConfigError, ValueError, KeyError, TypeError):
            return None  # encrypted with a key dropped since, or unreadable: fetch a new one

    def _parse(self, body: bytes, where: str, secret: str, bound_to: str) -> AccessToken:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenError(
                f"OAuth2 token endpoint {where} answered 200 but not with a JSON object: "
                "is oauth_token_url the token endpoint?",
                transient=False,
                status=200,
            )
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(
                f"OAuth2 token endpoint {where} answered without an access_token", transient=False, status=200
            )
        token_type = data.get("token_type")
        if token_type is not None and str(token_type).lower() != "bearer":
            raise _scrub(TokenError(
                f"OAuth2 token endpoint {where} issued a {one_line(str(token_type), 40)} token; XOAUTH2 needs a Bearer token",
                transient=False, status=200,
            ), secret)  # fmt: skip
        try:
            expires_in = float(data.get("expires_in", DEFAULT_EXPIRES_IN_S))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN_S
        if not math.isfinite(expires_in) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN_S
        return AccessToken(value, self._clock() + lifetime(expires_in), bound_to, fresh=True)

    def _http_error(self, status: int, body: bytes, where: str, secret: str) -> TokenError:
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
            hint = ERROR_HINTS.get(code, "")
        elif body.strip():
            detail = f": {excerpt(body.decode('utf-8', 'replace'), [secret])}"
        transient = is_transient_status(status)
        if not hint and not transient:
            hint = "check oauth_token_url" if status in (404, 405) or 300 <= status < 400 else ""
        if transient:
            hint = "retried later"
        message = f"OAuth2 token endpoint {where} answered {status}{detail}"
        return TokenError(message + (f"; {hint}" if hint else ""), transient=transient, status=status)

    def _network_error(self, reason: BaseException, where: str, settings: SmtpSettings) -> TokenError:
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = reason.verify_message or reason.reason or str(reason)
            return TokenError(
                f"OAuth2 token endpoint {where}: certificate verify failed: {detail}", transient=False
            )
        if isinstance(reason, TimeoutError):
            return TokenError(
                f"OAuth2 token endpoint {where} did not answer within {settings.connect_timeout:g}s "
                f"(connect) / {settings.timeout:g}s (timeout); retried later",
                transient=True,
            )
        if isinstance(reason, ConnectionRefusedError):
            return TokenError(
                f"OAuth2 token endpoint {where} refused the connection; retried later", transient=True
            )
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(settings.oauth_token_url or "").hostname
            return TokenError(
                f"cannot resolve {host} (oauth_token_url): {reason.strerror}; retried later", transient=True
            )
        if isinstance(reason, ValueError):  # an oversized or otherwise unusable response
            return TokenError(f"OAuth2 token endpoint {where}: {one_line(str(reason))}", transient=False)
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return TokenError(f"OAuth2 token endpoint {where}: {one_line(detail)}; retried later", transient=True)


def _scrub(error: TokenError, secret: str) -> TokenError:
    """Belt and braces: an endpoint echoing the client secret must not put it into a log line."""
    text = str(error)
    if len(secret) < 4 or secret not in text:
        return error
    return TokenError(text.replace(secret, "**********"), transient=error.transient, status=error.status)
