"""`mailworker secrets rotate`: every stored settings secret sealed again with the first key; and the
check that the key opens the saved secrets at all (`mailworker health`, a worker's start).

Saved settings, drafts and history entries of every realm; secrets of the old (Fernet) format are sealed
to their settings on the way (config/codec.py). Each key is rewritten under WATCH, so a save landing
meanwhile is never overwritten with older data: the rotation of that key simply runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.exceptions import WatchError

from config.codec import Rotation, draft_id_of, read_settings, rotate_data
from config.crypto import KeyNotHeld, SecretBox
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


@dataclass
class KeyCheck:
    """What `check_key` found: the realms whose saved secret the key opens, and those it does not."""

    opened: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # realm -> why (the key id no configured key has)

    def problem(self) -> str | None:
        """One line for a person when some secret cannot be opened, else None."""
        if not self.lost:
            return None
        realms = sorted(self.lost)
        shown = ", ".join(realms[:5]) + (f" and {len(realms) - 5} more" if len(realms) > 5 else "")
        why = self.lost[realms[0]].removeprefix("it was ")
        return (f"the saved secrets of {len(realms)} realm(s) ({shown}) were {why}: add that key to "
                "MAILWORKER_SECRET_KEY (rotation keeps the old key after a comma), or, if it is lost, enter "
                "each secret again (`mailworker settings save --realm R --password-stdin`)")  # fmt: skip


def check_key(
    box: SecretBox, realms: Iterable[str], saved_fields: Callable[[str], dict[str, Any] | None]
) -> KeyCheck:
    """Try the key on each realm's saved secret. `box` raises ConfigError at once when the key is missing or
    malformed. A secret whose settings were changed behind the store's back is not the key's fault: it
    counts neither way (the job that meets it says so)."""
    check = KeyCheck()
    for realm in realms:
        fields = saved_fields(realm)
        if not fields or not any(name.endswith("_encrypted") for name in fields):
            continue
        try:
            decoded = read_settings(fields, box, realm=realm)
        except KeyNotHeld as error:
            check.lost[realm] = error.reason
            continue
        if not decoded.unusable:
            check.opened.append(realm)
    return check
