"""A realm's records in Redis: as stored (the saved hash, the history list, the draft string), and as read
(SavedSettings, DraftSettings: what config/store.py returns).

One writer of the saved version and its history entry, for a save, a rollback and a restore from a backup
(config/backup.py); key names in config/keys.py, what the fields mean in config/store.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.edits import Change
from config.epoch import queue_epoch
from config.keys import Keys
from config.smtp import SmtpSettings


@dataclass(frozen=True)
class SavedSettings:
    realm: str
    version: int
    settings: SmtpSettings
    saved_at: float
    note: str | None = None
    changes: tuple[Change, ...] = ()  # what this save changed (save and rollback fill it in)
    by: str | None = None  # who saved it (the CLI's --by, the OS user by default; the API token's name)
    # Read leniently only (`lenient=True`): secrets that cannot be used, and why (config/codec.py).
    unusable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftSettings:
    realm: str
    base_version: int
    settings: SmtpSettings
    updated_at: float
    draft_id: str = ""  # new with every edit: what a save names to say "the draft I reviewed"
    unusable: Mapping[str, str] = field(default_factory=dict)


def stored_json(value: Any) -> str:
    """The one JSON text form of everything the store keeps (sorted keys: equal data, equal text)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def queue_saved(pipe: Any, keys: Keys, realm: str, entry: Mapping[str, Any], history_size: int) -> None:
    """Inside a transaction: `entry` {version, data, saved_at, note, by} (data as stored, secrets sealed)
    becomes the realm's saved version and the newest entry of its history."""
    queue_saved_hash(pipe, keys, realm, entry)
    pipe.lpush(keys.history(realm), stored_json(history_entry(entry)))
    pipe.ltrim(keys.history(realm), 0, history_size - 1)


def history_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {name: entry.get(name) for name in ("version", "data", "saved_at", "note", "by")}


def queue_saved_hash(pipe: Any, keys: Keys, realm: str, entry: Mapping[str, Any]) -> None:
    """Inside a transaction: `entry` becomes the saved version (the history is the caller's)."""
    pipe.hset(
        keys.saved(realm),
        mapping={
            "version": int(entry["version"]),
            "data": stored_json(entry["data"]),
            "saved_at": repr(float(entry["saved_at"])),
            "note": entry.get("note") or "",
            "by": entry.get("by") or "",
        },
    )
    pipe.sadd(keys.realms(), realm)
    queue_epoch(pipe, keys)


def read_realm(client: Any, keys: Keys, realm: str) -> dict[str, Any] | None:
    """The realm's saved hash, draft and history as stored, read in one transaction (a save landing
    meanwhile is either all in or all out); None when the realm has no saved settings."""
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.saved(realm))
    pipe.get(keys.draft(realm))
    pipe.lrange(keys.history(realm), 0, -1)
    saved, draft, history = pipe.execute()
    if not saved:
        return None
    return {
        "saved": {
            "version": int(saved["version"]),
            "data": json.loads(saved["data"]),
            "saved_at": float(saved["saved_at"]),
            "note": saved.get("note") or None,
            "by": saved.get("by") or None,
        },
        "draft": json.loads(draft) if draft is not None else None,
        "history": [json.loads(raw) for raw in history],
    }
