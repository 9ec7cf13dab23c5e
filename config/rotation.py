"""`mailworker secrets rotate`: every stored settings secret sealed again with the first key.

Saved settings, drafts and history entries of every realm; secrets of the old (Fernet) format are sealed
to their settings on the way (config/codec.py). Each key is rewritten under WATCH, so a save landing
meanwhile is never overwritten with older data: the rotation of that key simply runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import WatchError

from config.codec import Rotation, draft_id_of, rotate_data
from config.crypto import SecretBox
from config.keys import Keys

T = TypeVar("T")


def retrying_transaction(client: redis.Redis, keys: list[str], body: Callable[[Any], T]) -> T:
    """Run `body` (reads, then pipe.multi() and queued writes) until no watched key changed meanwhile.

    Only for writes that are safe to re-apply on fresh data (draft edits, re-encryption); a save
    must not be retried, since its base version would silently move.
    """
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                result = body(pipe)
                pipe.execute()
                return result
            except WatchError:
                continue


def rotate_secrets(client: redis.Redis, keys: Keys, box: SecretBox) -> Rotation:
    pattern = f"{_escape_glob(keys.prefix)}:realm:*"
    rotations: dict[str, Callable[[Any, str, str, SecretBox], Rotation]] = {
        "saved": _rotate_saved, "draft": _rotate_draft, "history": _rotate_history,
    }  # fmt: skip
    total = Rotation()
    for key in client.scan_iter(match=pattern, count=500):
        realm, _, kind = str(key).removeprefix(f"{keys.prefix}:realm:").rpartition(":")
        rotate = rotations.get(kind)
        if rotate is not None:
            total.add(retrying_transaction(client, [key], _Step(rotate, str(key), realm, box)))
    return total


class _Step:
    def __init__(self, rotate: Callable[[Any, str, str, SecretBox], Rotation], key: str, realm: str,
                 box: SecretBox) -> None:  # fmt: skip
        self.rotate, self.key, self.realm, self.box = rotate, key, realm, box

    def __call__(self, pipe: Any) -> Rotation:
        return self.rotate(pipe, self.key, self.realm, self.box)


def _escape_glob(text: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def _rotate_saved(pipe: Any, key: str, realm: str, box: SecretBox) -> Rotation:
    raw = pipe.hget(key, "data")
    if raw is None:
        return Rotation()
    data = json.loads(raw)
    result = rotate_data(data, box, realm=realm, where=f"{realm} (saved)")
    pipe.multi()
    pipe.hset(key, "data", _dumps(data))
    return result


def _rotate_draft(pipe: Any, key: str, realm: str, box: SecretBox) -> Rotation:
    raw = pipe.get(key)
    if raw is None:
        return Rotation()
    entry = json.loads(raw)
    # The id stays: rotating keys does not make a reviewed draft a different one.
    entry["id"] = draft_id_of(entry, str(raw))
    result = rotate_data(entry["data"], box, realm=realm, where=f"{realm} (draft)")
    pipe.multi()
    pipe.set(key, _dumps(entry), keepttl=True)
    return result


def _rotate_history(pipe: Any, key: str, realm: str, box: SecretBox) -> Rotation:
    entries = [json.loads(raw) for raw in pipe.lrange(key, 0, -1)]
    result = Rotation()
    for entry in entries:
        where = f"{realm} (history, version {entry.get('version')})"
        result.add(rotate_data(entry["data"], box, realm=realm, where=where))
    if not entries:
        return result
    pipe.multi()
    pipe.delete(key)
    pipe.rpush(key, *(_dumps(e) for e in entries))
    return result
