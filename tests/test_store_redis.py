"""SettingsStore on the real Redis: nothing secret in clear anywhere, racing writers, revert, rollback."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from config.crypto import MASK, SecretBox
from config.errors import ConflictError
from config.keys import Keys
from config.store import SettingsStore

pytestmark = pytest.mark.integration

PASSWORD = "Zq9-distinctive-smtp-password-41"
CLIENT_SECRET = "Cs7-distinctive-client-secret-88"
BASE = {
    "from": "noreply@acme.example",
    "host": "smtp.acme.example",
    "port": 587,
    "starttls": True,
    "auth": True,
    "username": "bot",
    "password": PASSWORD,
}


@pytest.fixture
def store(real_redis: Any, key_prefix: str) -> SettingsStore:
    return make_store(real_redis, key_prefix)


def make_store(client: Any, prefix: str) -> SettingsStore:
    return SettingsStore(client, Keys(prefix), SecretBox(os.environ["MAILWORKER_SECRET_KEY"].split(",")))


def everything_under(client: Any, prefix: str) -> list[str]:
    """Every key name and every value under the prefix, whatever the type."""
    seen: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        seen.append(key)
        kind = client.type(key)
        if kind == "hash":
            for field, value in client.hgetall(key).items():
                seen += [field, value]
        elif kind == "string":
            seen.append(client.get(key))
        elif kind == "list":
            seen += client.lrange(key, 0, -1)
        elif kind == "set":
            seen += list(client.smembers(key))
        elif kind == "zset":
            seen += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            pytest.fail(f"unexpected key type {kind} for {key}")
    return seen


def test_no_secret_in_clear_anywhere(
    store: SettingsStore, real_redis: Any, key_prefix: str, realm: str
) -> None:
    store.save(realm, BASE)
    store.save(realm, {"password": MASK, "timeout": 20})
    store.set_draft(realm, {"from_display_name": "Acme"})
    store.save(realm)
    store.set_draft(
        realm,
        {
            "auth_type": "xoauth2",
            "password": None,
            "oauth_token_url": "https://login.example/token",
            "oauth_client_id": "id",
            "oauth_client_secret": CLIENT_SECRET,
        },
    )
    store.rollback(realm, 1)
    values = everything_under(real_redis, key_prefix)
    assert len(values) > 8  # saved hash, draft, history, realms set were all scanned
    assert any("password_encrypted" in v for v in values)
    assert any("oauth_client_secret_encrypted" in v for v in values)
    for value in values:
        assert PASSWORD not in value
        assert CLIENT_SECRET not in value
    # ...and yet both are readable through the store
    assert store.saved(realm).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    assert store.draft(realm).settings.secret("oauth_client_secret") == CLIENT_SECRET  # type: ignore[union-attr]


def test_two_writers_race_exactly_one_wins(
    real_redis: Any, key_prefix: str, realm: str, redis_url: str
) -> None:
    import redis

    make_store(real_redis, key_prefix).save(realm, BASE)
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def writer(name: str, timeout: int) -> None:
        # Each thread its own connection and store, like two admins on two machines.
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = make_store(client, key_prefix)
        barrier.wait()
        try:
            outcomes[name] = store.save(realm, {"timeout": timeout}, expected_version=1)
        except ConflictError as error:
            outcomes[name] = error
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(n, t)) for n, t in (("alice", 20), ("bob", 30))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    conflicts = [o for o in outcomes.values() if isinstance(o, ConflictError)]
    wins = [o for o in outcomes.values() if not isinstance(o, ConflictError)]
    assert len(wins) == 1 and len(conflicts) == 1, outcomes
    assert "edit from version 1, now version 2" in str(conflicts[0])
    store = make_store(real_redis, key_prefix)
    assert store.version(realm) == 2
    assert store.saved(realm).settings.timeout == wins[0].settings.timeout  # type: ignore[union-attr, attr-defined]
    assert [h.version for h in store.history(realm)] == [2, 1]


def test_many_racing_saves_without_expected_version_never_lose_a_version(
    real_redis: Any, key_prefix: str, realm: str, redis_url: str
) -> None:
    """Each save either commits as a distinct version or raises ConflictError: never two version 2s."""
    import redis

    make_store(real_redis, key_prefix).save(realm, BASE)
    committed: list[int] = []
    lock = threading.Lock()

    def writer(timeout: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = make_store(client, key_prefix)
        for _ in range(5):
            try:
                version = store.save(realm, {"timeout": timeout}).version
            except ConflictError:
                continue
            with lock:
                committed.append(version)
        client.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(11, 15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(committed) == len(set(committed))
    assert make_store(real_redis, key_prefix).version(realm) == 1 + len(committed)


def test_revert_and_rollback(store: SettingsStore, realm: str) -> None:
    store.save(realm, BASE)
    store.save(realm, {"timeout": 20})
    store.set_draft(realm, {"timeout": 99})
    assert store.revert(realm) is True
    assert store.effective(realm)[1:] == ("saved", 2)
    rolled = store.rollback(realm, 1)
    assert (rolled.version, rolled.settings.timeout) == (3, 10.0)
    assert store.version(realm) == 3
    assert [h.version for h in store.history(realm)] == [3, 2, 1]
    assert realm in store.realms()
