"""A realm's webhook endpoints in Redis: id, URL, event types, and the signing secret, sealed.

The secret is generated here (`whsec_` + 32 random bytes), returned once by `add`, and stored only sealed
with MAILWORKER_SECRET_KEY as the SMTP password is (config/crypto.py), bound to the realm, the endpoint id
and its URL: a sealed secret copied to another endpoint, or a URL edited in Redis, no longer opens.
Everything else shows it as MASK.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from config.crypto import MASK, SealBroken, Sealed, SecretBox
from config.errors import ConfigError, NotFound
from config.keys import Keys
from config.names import check_realm
from config.urls import check_public_url
from worker.outcomes.webhooks.decisions import check_events
from worker.outcomes.webhooks.signing import new_secret

ID_PREFIX = "wh_"


@dataclass(frozen=True)
class Endpoint:
    id: str
    realm: str
    url: str
    events: tuple[str, ...]
    created_at: float
    disabled: str | None = None  # why it no longer gets events (a 410 Gone), None while enabled

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "realm": self.realm, "url": self.url, "events": list(self.events),
                "secret": MASK, "created_at": self.created_at, "disabled": self.disabled}  # fmt: skip


def _associated_data(endpoint_id: str, realm: str, url: str) -> bytes:
    return json.dumps(["webhook-secret", realm, endpoint_id, url]).encode()


def _endpoint(raw: Any) -> Endpoint:
    data = json.loads(str(raw))
    return Endpoint(id=data["id"], realm=data["realm"], url=data["url"], events=tuple(data["events"]),
                    created_at=data["created_at"], disabled=data.get("disabled"))  # fmt: skip


class EndpointStore:
    def __init__(self, client: Any, keys: Keys, box: Callable[[], SecretBox], *, allow_private: bool) -> None:
        self.redis = client
        self.keys = keys
        self.box = box  # a callable: reading endpoints needs no key, only signing and adding do
        self.allow_private = allow_private

    def add(self, realm: str, url: str, events: Iterable[str]) -> tuple[Endpoint, str]:
        """The new endpoint and its secret (the only time the secret leaves the store in clear)."""
        check_realm(realm)
        check_public_url("url", url, allow_private=self.allow_private)
        endpoint = Endpoint(id=ID_PREFIX + secrets.token_hex(8), realm=realm, url=url,
                            events=check_events("events", events), created_at=time.time())  # fmt: skip
        secret = new_secret()
        sealed = self.box().seal(secret, _associated_data(endpoint.id, realm, url))
        self._write(endpoint, sealed.to_json())
        return endpoint, secret

    def _write(self, endpoint: Endpoint, sealed: dict[str, Any]) -> None:
        record = {**endpoint.public(), "events": list(endpoint.events), "secret": sealed}
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.webhooks(endpoint.realm), endpoint.id, json.dumps(record))
        pipe.hset(self.keys.webhook_realms(), endpoint.id, endpoint.realm)
        pipe.execute()

    def realms(self) -> set[str]:
        """The realms that have at least one endpoint (one round trip for the whole service)."""
        return {str(r) for r in self.redis.hvals(self.keys.webhook_realms())}

    def for_realm(self, realm: str) -> list[Endpoint]:
        return sorted((_endpoint(raw) for raw in self.redis.hvals(self.keys.webhooks(realm))),
                      key=lambda e: e.created_at)  # fmt: skip

    def list(self, realm: str | None = None) -> list[Endpoint]:
        realms = [realm] if realm is not None else sorted(self.realms())
        return [endpoint for name in realms for endpoint in self.for_realm(name)]

    def _raw(self, endpoint_id: str) -> tuple[str, dict[str, Any]]:
        realm = self.redis.hget(self.keys.webhook_realms(), endpoint_id)
        raw = self.redis.hget(self.keys.webhooks(str(realm)), endpoint_id) if realm is not None else None
        if raw is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}: see `mailworker webhook list`")
        return str(realm), json.loads(str(raw))

    def get(self, endpoint_id: str) -> Endpoint:
        return _endpoint(json.dumps(self._raw(endpoint_id)[1]))

    def secret(self, endpoint_id: str) -> tuple[Endpoint, str]:
        """The endpoint and its signing secret, opened (for the worker signing a delivery)."""
        realm, data = self._raw(endpoint_id)
        endpoint = _endpoint(json.dumps(data))
        secret = self.box().open(Sealed.from_json(data["secret"]), _associated_data(endpoint.id, realm,
                                                                                    endpoint.url))  # fmt: skip
        return endpoint, secret

    def remove(self, endpoint_id: str, realm: str | None = None) -> bool:
        """Deleted when it exists (and, with `realm`, belongs to that realm)."""
        owner = self.redis.hget(self.keys.webhook_realms(), endpoint_id)
        if owner is None or (realm is not None and str(owner) != realm):
            return False
        pipe = self.redis.pipeline()
        pipe.hdel(self.keys.webhooks(str(owner)), endpoint_id)
        pipe.hdel(self.keys.webhook_realms(), endpoint_id)
        pipe.execute()
        return True

    def reseal(self) -> tuple[int, tuple[str, ...]]:
        """`mailworker secrets rotate`: every signing secret sealed again with the first key. Returns how
        many, and a line for each that no configured key opens (left as it is)."""
        resealed = 0
        problems: tuple[str, ...] = ()
        for realm in sorted(self.realms()):
            for endpoint_id, raw in self.redis.hgetall(self.keys.webhooks(realm)).items():
                data = json.loads(str(raw))
                bound = _associated_data(str(endpoint_id), realm, data["url"])
                try:
                    secret = self.box().open(Sealed.from_json(data["secret"]), bound)
                except (ConfigError, SealBroken, ValueError) as error:
                    problems += (f"webhook {endpoint_id} of realm {realm}: {error or 'damaged'}",)
                    continue
                data["secret"] = self.box().seal(secret, bound).to_json()
                self.redis.hset(self.keys.webhooks(realm), endpoint_id, json.dumps(data))
                resealed += 1
        return resealed, problems

    def disable(self, endpoint_id: str, why: str) -> None:
        realm, data = self._raw(endpoint_id)
        data["disabled"] = why
        self.redis.hset(self.keys.webhooks(realm), endpoint_id, json.dumps(data))


class EndpointCache:
    """Endpoints per realm, kept in the process for `ttl` seconds: recording an outcome costs no round trip
    to Redis for a realm without endpoints (the set of realms that have any is read once per `ttl` for the
    whole process), and one per `ttl` per realm that has some. A new or removed endpoint takes effect
    within `ttl`."""

    def __init__(self, store: EndpointStore, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._realms: tuple[float, set[str]] = (-1e18, set())
        self._endpoints: dict[str, tuple[float, list[Endpoint]]] = {}

    def for_realm(self, realm: str) -> list[Endpoint]:
        now = self.clock()
        if now - self._realms[0] >= self.ttl:
            self._realms = (now, self.store.realms())
            self._endpoints.clear()
        if realm not in self._realms[1]:
            return []
        fetched_at, endpoints = self._endpoints.get(realm, (-1e18, []))
        if now - fetched_at >= self.ttl:
            endpoints = self.store.for_realm(realm)
            self._endpoints[realm] = (now, endpoints)
        return endpoints
