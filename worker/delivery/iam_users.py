"""Users of the IAM, looked up through its admin REST API (Keycloak), for events that name a user only by id.

    directory = UserDirectory(tokens)
    user = directory.user("acme", settings, "8f1c0b6e-...")   # EventUser, or raises LookupFailure

`GET {iam_url}/admin/realms/{iam_realm}/users/{id}` with a bearer token of the realm's service-account
client, which gets it by the client-credentials grant at `{iam_url}/realms/{iam_realm}/protocol/
openid-connect/token`. The token is fetched, cached (encrypted in Redis, until shortly before it expires)
and locked exactly like an XOAUTH2 token (worker/delivery/oauth.py); the GET goes through the same client
(worker/delivery/oauth_http.py: deadlines, checked addresses only, no redirects, so the token never goes
anywhere but iam_url's host).

Users are kept in this process for USER_TTL_S (a burst of failed logins asks once), at most MAX_USERS of
them (the oldest go first), keyed by the IAM settings' fingerprint: new settings ask again.

A failure is a LookupFailure naming the user id, with the reason worker/policy.py gives its HTTP status
(`classify_lookup`): retried (no answer, 5xx), or a dead letter (`recipient`: unknown user, no address;
`lookup`: the client is refused or not configured). A cached token the API rejects (401: revoked, or
expired early) is replaced once by a fresh one; a fresh token rejected is the client's fault.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from config.errors import InvalidInput, MailWorkerError
from config.names import check_locale
from config.smtp import IAM_FIELDS, SmtpSettings
from worker.delivery.oauth import AccessToken, Grant, TokenError, TokenProvider, endpoint_name
from worker.delivery.oauth_http import excerpt, get_json, network_reason
from worker.jobs.events import EventUser
from worker.policy import RETRY, lookup_reason

USER_TTL_S = 60.0
MAX_USERS = 1000
IAM_NAMES = {"url": "iam_url", "client_id": "iam_client_id", "client_secret": "iam_client_secret",
             "scope": "the client's scopes"}  # fmt: skip
HINTS = {
    401: "the IAM refused the service account's token: check iam_client_id and iam_client_secret",
    403: "the service account may not read users: give it the realm-management role view-users",
    404: "the IAM does not know this user (deleted since the event?)",
}


class LookupFailure(MailWorkerError):
    """No user. `reason`: RETRY (transient) or the dead-letter reason; the message names the user id."""

    def __init__(self, message: str, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status

    @property
    def transient(self) -> bool:
        return self.reason == RETRY


def iam_realm(realm: str, settings: SmtpSettings) -> str:
    return settings.iam_realm or realm


def _base(settings: SmtpSettings) -> str:
    return (settings.iam_url or "").rstrip("/")


def iam_grant(realm: str, settings: SmtpSettings) -> Grant:
    """The service-account client's grant at the IAM realm's token endpoint."""
    where = urllib.parse.quote(iam_realm(realm, settings), safe="")
    return Grant("iam", f"{_base(settings)}/realms/{where}/protocol/openid-connect/token",
                 settings.iam_client_id or "", settings.secret("iam_client_secret") or "", None,
                 settings.connect_timeout, settings.timeout, label="IAM token endpoint",
                 names=IAM_NAMES)  # fmt: skip


def user_url(realm: str, settings: SmtpSettings, user_id: str) -> str:
    where = urllib.parse.quote(iam_realm(realm, settings), safe="")
    return f"{_base(settings)}/admin/realms/{where}/users/{urllib.parse.quote(user_id, safe='')}"


def parse_user(data: Any) -> EventUser:
    """Keycloak's UserRepresentation as an event's user; a locale that is no language tag is left out."""
    if not isinstance(data, dict):
        raise ValueError("the user is not a JSON object")
    attributes = data.get("attributes") if isinstance(data.get("attributes"), dict) else {}
    locales = attributes.get("locale") if isinstance(attributes, dict) else None
    locale = locales[0] if isinstance(locales, list) and locales else locales
    try:
        check_locale("locale", locale if isinstance(locale, str) else None)
    except InvalidInput:
        locale = None
    fields = {name: data.get(key) for name, key in
              (("email", "email"), ("username", "username"), ("first_name", "firstName"),
               ("last_name", "lastName"))}  # fmt: skip
    clean = {name: value for name, value in fields.items() if isinstance(value, str) and value}
    return EventUser(**clean, locale=locale if isinstance(locale, str) else None)


def _fingerprint(realm: str, settings: SmtpSettings) -> str:
    parts = (
        _base(settings),
        iam_realm(realm, settings),
        settings.iam_client_id,
        settings.secret("iam_client_secret"),
    )
    return hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()


class UserDirectory:
    """Looks users up by id; a short, bounded cache in this process."""

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        ttl: float = USER_TTL_S,
        max_users: int = MAX_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._ttl = ttl
        self._max = max_users
        self._clock = clock
        self._users: OrderedDict[tuple[str, str, str], tuple[float, EventUser]] = OrderedDict()
        self._lock = threading.Lock()  # a worker with the thread pool looks users up from several threads

    def user(self, realm: str, settings: SmtpSettings, user_id: str) -> EventUser:
        if not all(getattr(settings, name) for name in IAM_FIELDS):
            raise LookupFailure(
                f"user {user_id}: the event carries no e-mail address and realm {realm} has no user look-up "
                f"configured (mailworker settings save --realm {realm} --iam-url ... --iam-client-id ... "
                "--iam-client-secret-stdin)",
                "lookup",
            )
        if user_id in (".", ".."):  # not an id, a path step: it would ask for another resource
            raise LookupFailure(f"user {user_id}: not a user id", "recipient")
        key = (realm, _fingerprint(realm, settings), user_id)
        now = self._clock()
        with self._lock:
            cached = self._users.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = self._fetch(realm, settings, user_id)  # not under the lock: one slow IAM holds no one else
        with self._lock:
            self._users[key] = (now + self._ttl, user)
            self._users.move_to_end(key)
            while len(self._users) > self._max:
                self._users.popitem(last=False)
        return user

    def forget(self) -> None:
        with self._lock:
            self._users.clear()

    def _fetch(self, realm: str, settings: SmtpSettings, user_id: str) -> EventUser:
        grant = iam_grant(realm, settings)
        url = user_url(realm, settings, user_id)
        token = self._token(realm, grant, user_id)
        status, body = self._get(url, token.value, grant, user_id)
        if status == 401 and not token.fresh:
            self._tokens.invalidate(realm, token.value, kind="iam")
            token = self._token(realm, grant, user_id)
            status, body = self._get(url, token.value, grant, user_id)
        if status != 200:
            raise self._refused(status, body, url, user_id, [grant.client_secret, token.value])
        try:
            user = parse_user(json.loads(body))
        except ValueError:
            raise LookupFailure(f"user {user_id}: {endpoint_name(url)} answered 200 but not with a user "
                                "(is iam_url the IAM's base URL?)", "lookup", 200) from None  # fmt: skip
        if not user.email:
            raise LookupFailure(f"user {user_id} has no e-mail address in the IAM: nobody to notify",
                                "recipient", 200)  # fmt: skip
        return user

    def _token(self, realm: str, grant: Grant, user_id: str) -> AccessToken:
        try:
            return self._tokens.token(realm, grant)
        except TokenError as error:
            reason = RETRY if error.transient else "lookup"
            raise LookupFailure(f"user {user_id}: {error}", reason, error.status) from None

    def _get(self, url: str, token: str, grant: Grant, user_id: str) -> tuple[int, bytes]:
        try:
            pinned = self._tokens.destination("iam_url", url, grant)
        except TokenError as error:
            raise LookupFailure(f"user {user_id}: {error}", RETRY if error.transient else "lookup") from None
        try:
            return get_json(url, {"Authorization": f"Bearer {token}"}, pinned=pinned,
                            connect_timeout=grant.connect_timeout, timeout=grant.timeout)  # fmt: skip
        except (OSError, http.client.HTTPException, ValueError) as error:
            reason = network_reason(error)
            what = "no answer in time" if isinstance(reason, TimeoutError) else (
                getattr(reason, "strerror", None) or str(reason) or type(reason).__name__)  # fmt: skip
            raise LookupFailure(f"user {user_id}: IAM admin API {endpoint_name(url)}: {excerpt(str(what))}; "
                                "retried later", RETRY) from None  # fmt: skip

    def _refused(self, status: int, body: bytes, url: str, user_id: str, secrets: list[str]) -> LookupFailure:
        reason = lookup_reason(status)
        # What the IAM said, with the secret and the token masked should it echo them.
        said = excerpt(body.decode("utf-8", "replace"), secrets, 120) if body.strip() else ""
        hint = HINTS.get(status, "retried later" if reason == RETRY else "check iam_url and iam_realm")
        message = f"user {user_id}: IAM admin API {endpoint_name(url)} answered {status}"
        return LookupFailure(message + (f" ({said})" if said else "") + f"; {hint}", reason, status)
