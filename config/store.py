"""Per-realm SMTP settings in Redis: draft, save, revert, history, rollback.

Layout (key names in config/keys.py):
- saved:   hash {version, data, saved_at, note}; `data` is the settings' JSON with every secret stored only
           sealed to the fields it may be sent with (`password_encrypted`, `oauth_client_secret_encrypted`,
           `iam_client_secret_encrypted`; config/codec.py), never in clear.
- draft:   string JSON {id, base_version, data, updated_at}: the unsaved edit, testable before saving.
- history: list of JSON {version, data, saved_at, note}, newest first, trimmed to `history_size`.
- realms:  set of realm names that have saved settings.
A realm's secondary SMTP server (failover) has the same three keys of its own (config/keys.py ServerKeys).

A save commits only if nobody saved since the edit started (WATCH/MULTI): no lost update. And it never
applies draft changes its caller did not see (config.conflicts.save_conflict): while a draft is pending,
a save with changes of its own must name the draft it reviewed (`draft_id`).

The pure parts live beside: edit rules in config/edits.py, conflicts in config/conflicts.py, the stored
form in config/codec.py, key rotation in config/rotation.py; the names other modules used to import from
here still are (`from config.store import edit_settings` keeps working).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.exceptions import WatchError

from config.codec import (
    Decoded,
    Rotation,
    UnusableSettings,
    decode_settings,
    draft_id_of,
    encode_settings,
    public_fields,
    read_settings,
    unusable_message,
)
from config.conflicts import conflict_message, draft_conflict_message, save_conflict
from config.crypto import SecretBox
from config.edits import apply_changes, check_note, diff_settings, edit_settings, weakening_change
from config.epoch import Epoch, read_epoch, read_wipe, record_wipe
from config.errors import ConflictError, NotFound
from config.keys import PRIMARY, SECONDARY, SERVERS, Keys, ServerKeys, channel
from config.names import check_realm
from config.records import DraftSettings, SavedSettings, queue_saved, stored_json
from config.rotation import KeyCheck, check_key, retrying_transaction, rotate_secrets
from config.smtp import SmtpSettings

__all__ = [  # what other modules import from here
    "DraftSettings", "SavedSettings", "SettingsStore", "UnusableSettings", "apply_changes", "decode_settings",
    "edit_settings", "encode_settings", "weakening_change",
]  # fmt: skip

DEFAULT_HISTORY_SIZE = 20
# Rollback needs a few versions to go back to; fewer than this makes history useless.
MIN_HISTORY_SIZE = 10


# ---- the store -----------------------------------------------------------------------------------------


class SettingsStore:
    def __init__(
        self,
        redis: redis.Redis,
        keys: Keys,
        box: SecretBox | Callable[[], SecretBox],
        history_size: int = DEFAULT_HISTORY_SIZE,
        *,
        allow_private_urls: bool = False,
    ) -> None:
        if history_size < MIN_HISTORY_SIZE:
            raise ValueError(f"history_size must be at least {MIN_HISTORY_SIZE}")
        self._redis = redis
        self._keys = keys
        # A callable is resolved on first use: readers of non-secret fields (producers, `stats`) need no key.
        self._box_source = box
        self.history_size = history_size
        self.allow_private_urls = allow_private_urls  # MAILWORKER_ALLOW_PRIVATE_URLS (config/urls.py)
        self.server = keys.server if isinstance(keys, ServerKeys) else PRIMARY

    def for_server(self, server: str) -> SettingsStore:
        """The store of the realm's `server` (config/keys.py SERVERS): the same class over that server's keys,
        so the secondary has the primary's model, validation, sealing, harvest rule, history and drafts."""
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}")
        keys = Keys(self._keys.prefix) if server == PRIMARY else ServerKeys(self._keys.prefix, server)
        return SettingsStore(self._redis, keys, self._box_source, self.history_size,
                             allow_private_urls=self.allow_private_urls)  # fmt: skip

    @property
    def _box(self) -> SecretBox:
        if not isinstance(self._box_source, SecretBox):
            self._box_source = self._box_source()
        return self._box_source

    # ---- reading --------------------------------------------------------------------------------------
    #
    # `lenient`: a secret whose binding broke does not fail the read; it is reported in `unusable` (and
    # holds a placeholder). For showing and editing only: what sends mail reads strictly.

    def version(self, realm: str) -> int:
        """The saved version, 0 if never saved: one HGET, so workers can check their cache per job."""
        value = self._redis.hget(self._keys.saved(realm), "version")
        return int(value) if value is not None else 0

    def saved(self, realm: str, *, lenient: bool = False) -> SavedSettings | None:
        return self._read_saved(self._redis, realm, lenient=lenient)

    def draft(self, realm: str, *, lenient: bool = False) -> DraftSettings | None:
        return self._read_draft(self._redis, realm, lenient=lenient)

    def check_key(self) -> KeyCheck:
        """Does MAILWORKER_SECRET_KEY open the saved secrets? (config/rotation.py)"""
        check = check_key(self._box, self.realms(), self.saved_fields)
        if self.server == PRIMARY:  # and each secondary server's, named `realm:secondary` (sealed so)
            other = self.for_server(SECONDARY)
            more = check_key(self._box, [channel(realm, SECONDARY) for realm in other.realms()],
                             lambda name: other.saved_fields(name.partition(":")[0]))  # fmt: skip
            check.opened += more.opened
            check.lost.update(more.lost)
        return check

    def saved_fields(self, realm: str) -> dict[str, Any] | None:
        """The saved settings as stored (JSON names), secrets still encrypted, nothing decrypted.

        For callers that need no secret, such as producers checking a realm's `allow_utf8`: they work
        without MAILWORKER_SECRET_KEY.
        """
        raw = self._redis.hget(self._keys.saved(realm), "data")
        return dict(json.loads(str(raw))) if raw is not None else None

    def effective(
        self, realm: str, *, use_draft: bool = True, lenient: bool = False
    ) -> tuple[SmtpSettings, str, int]:
        """(settings, "draft" | "saved", version): the draft when there is one and use_draft, else saved."""
        if use_draft:
            draft = self.draft(realm, lenient=lenient)
            if draft is not None:
                return draft.settings, "draft", draft.base_version
        saved = self.saved(realm, lenient=lenient)
        if saved is not None:
            return saved.settings, "saved", saved.version
        if not use_draft and self._redis.exists(self._keys.draft(realm)):
            raise NotFound(
                f"realm {realm} has no saved SMTP settings, only a draft: "
                f"run `mailworker settings save --realm {realm}`"
            )
        raise NotFound(
            f"realm {realm} has no SMTP settings: run "
            f"`mailworker settings save --realm {realm} --from ... --host ...`"
        )

    def history(self, realm: str, *, lenient: bool = False) -> list[SavedSettings]:
        """The last saved versions, newest first (secrets inside: mask with to_public on output)."""
        entries = self._redis.lrange(self._keys.history(realm), 0, -1)
        return [self._history_entry(realm, str(raw), lenient=lenient) for raw in entries]

    def public_history(self, realm: str) -> list[dict[str, Any]]:
        """The last saved versions, newest first, as stored: nothing decrypted (no secret key needed), a
        stored secret shown as the mask. For `settings history` and the admin API's history."""
        versions = []
        for raw in self._redis.lrange(self._keys.history(realm), 0, -1):
            entry = json.loads(raw)
            versions.append({
                "version": int(entry["version"]), "saved_at": float(entry["saved_at"]),
                "note": entry.get("note") or None, "by": entry.get("by") or None,
                "settings": public_fields(entry["data"]),
            })  # fmt: skip
        return versions

    def realms(self) -> list[str]:
        return sorted(str(name) for name in self._redis.smembers(self._keys.realms()))

    def epoch(self) -> Epoch | None:
        """The store's epoch (config/epoch.py); None: nothing was ever saved, or Redis lost its data."""
        return read_epoch(self._redis, self._keys)

    def wipe(self) -> dict[str, str] | None:
        """What a worker noticed when the epoch vanished, if one did."""
        return read_wipe(self._redis, self._keys)

    def record_wipe(self, lost: Epoch, noticed_by: str) -> None:
        record_wipe(self._redis, self._keys, lost, noticed_by)

    # ---- editing --------------------------------------------------------------------------------------

    def set_draft(self, realm: str, changes: Mapping[str, Any]) -> DraftSettings:
        """Edit the draft (created from the saved settings, or from nothing) and validate it."""
        check_realm(realm)
        draft_key, saved_key = self._keys.draft(realm), self._keys.saved(realm)

        def edit(pipe: Any) -> DraftSettings:
            base = self._read_draft(pipe, realm, lenient=True) or self._read_saved(pipe, realm, lenient=True)
            settings = self._edit(base, changes)
            base_version = (
                base.version if isinstance(base, SavedSettings) else base.base_version if base else 0
            )
            draft = DraftSettings(realm, base_version, settings, time.time(), uuid.uuid4().hex[:8])
            pipe.multi()
            pipe.set(draft_key, self._encode_draft(draft))
            return draft

        # Two people editing the same draft: WATCH makes the second re-read and re-apply its changes.
        return retrying_transaction(self._redis, [draft_key, saved_key], edit)

    def save(
        self,
        realm: str,
        changes: Mapping[str, Any] | None = None,
        *,
        expected_version: int | None = None,
        draft_id: str | None = None,
        note: str | None = None,
        by: str | None = None,
    ) -> SavedSettings:
        """Apply `changes` onto the draft (or the saved settings), validate, and save as the next version.

        The edit's base version (the draft's, `expected_version`, or the version read here) must still be
        the saved version when the write commits; otherwise ConflictError and nothing is written. While a
        draft is pending, `changes` are applied onto it only if `draft_id` names it (config.conflicts.
        save_conflict); without changes the draft is saved as it is. The result lists what changed.
        A `note` is one printable line of at most 500 characters (shown by `settings history`).
        """
        note, by = check_note(note), check_note(by, field="by", limit=200)
        check_realm(realm)
        changes = dict(changes or {})
        draft_key, saved_key = self._keys.draft(realm), self._keys.saved(realm)
        with self._redis.pipeline() as pipe:
            pipe.watch(saved_key, draft_key)
            current = self._read_version(pipe, realm)
            draft = self._read_draft(pipe, realm, lenient=True)
            saved = self._read_saved(pipe, realm, lenient=True)
            if expected_version is not None:
                self._check_base(realm, expected_version, current)
            pending = diff_settings(saved.settings if saved else None, draft.settings) if draft else []
            reason = save_conflict(draft.draft_id if draft else None, draft_id, gives_changes=bool(changes),
                                   draft_differs=bool(pending))  # fmt: skip
            if reason is not None:
                pending_id, base_version = (draft.draft_id, draft.base_version) if draft else (None, None)
                raise ConflictError(
                    draft_conflict_message(realm, reason, pending_id, base_version, pending, draft_id)
                )
            if draft is not None:
                self._check_base(realm, draft.base_version, current, from_draft=True)
            base = draft or saved
            if base is None and not changes:
                raise NotFound(
                    f"realm {realm} has no SMTP settings and no draft to save: run "
                    f"`mailworker settings save --realm {realm} --from ... --host ...`"
                )
            settings = self._edit(base, changes)
            done = tuple(diff_settings(saved.settings if saved else None, settings))
            record = SavedSettings(realm, current + 1, settings, time.time(), note, changes=done, by=by)
            pipe.multi()
            self._queue_write(pipe, record)
            pipe.delete(draft_key)
            self._execute_or_conflict(pipe, realm, current)
        return record

    def revert(self, realm: str) -> bool:
        """Discard the draft (the Email tab's Revert button); True if there was one."""
        return bool(self._redis.delete(self._keys.draft(realm)))

    def rollback(
        self, realm: str, to_version: int, *, note: str | None = None, by: str | None = None
    ) -> SavedSettings:
        """Save the settings of an earlier version (from history) as a new version.

        A pending draft is left alone: it was edited from an older version, so saving it later is refused
        as a conflict instead of silently undoing the rollback.
        """
        note, by = check_note(note), check_note(by, field="by", limit=200)
        check_realm(realm)
        saved_key = self._keys.saved(realm)
        with self._redis.pipeline() as pipe:
            pipe.watch(saved_key)
            current = self._read_version(pipe, realm)
            old = self._find_in_history(pipe, realm, to_version)
            saved = self._read_saved(pipe, realm, lenient=True)
            record = SavedSettings(
                realm, current + 1, old.settings, time.time(), note or f"rollback to version {to_version}",
                changes=tuple(diff_settings(saved.settings if saved else None, old.settings)), by=by,
            )  # fmt: skip
            pipe.multi()
            self._queue_write(pipe, record)
            self._execute_or_conflict(pipe, realm, current)
        return record

    def rotate_secrets(self) -> Rotation:
        """Seal every stored secret (saved, drafts, history) again with the first key (config/rotation.py).

        Run after prepending a new key to MAILWORKER_SECRET_KEY; then the old key can be dropped.
        """
        return rotate_secrets(self._redis, self._keys, self._box)

    # ---- internals ------------------------------------------------------------------------------------

    def _sealed_as(self, realm: str) -> str:  # `realm:secondary` for the secondary: no swapping secrets
        return channel(realm, self.server)

    def _edit(self, base: SavedSettings | DraftSettings | None, changes: Mapping[str, Any]) -> SmtpSettings:
        return edit_settings(
            base.settings if base is not None else None,
            changes,
            unusable=base.unusable if base is not None else None,
            allow_private_urls=self.allow_private_urls,
        )

    def _decode(self, data: Mapping[str, Any], realm: str, *, lenient: bool) -> Decoded:
        decoded = read_settings(data, self._box, realm=self._sealed_as(realm), lenient_keys=lenient)
        if decoded.unusable and not lenient:
            raise UnusableSettings(unusable_message(realm, decoded.unusable))
        return decoded

    def _read_version(self, client: Any, realm: str) -> int:
        value = client.hget(self._keys.saved(realm), "version")
        return int(value) if value is not None else 0

    def _read_saved(self, client: Any, realm: str, *, lenient: bool = False) -> SavedSettings | None:
        fields = client.hgetall(self._keys.saved(realm))
        if not fields:
            return None
        return self._saved_record(realm, {**fields, "data": json.loads(fields["data"])}, lenient=lenient)

    def _saved_record(self, realm: str, entry: Mapping[str, Any], *, lenient: bool) -> SavedSettings:
        """A saved version (the saved hash, or a history entry) with its settings decoded."""
        decoded = self._decode(entry["data"], realm, lenient=lenient)
        return SavedSettings(realm, int(entry["version"]), decoded.settings, float(entry["saved_at"]),
                             entry.get("note") or None, unusable=decoded.unusable,
                             by=entry.get("by") or None)  # fmt: skip

    def _read_draft(self, client: Any, realm: str, *, lenient: bool = False) -> DraftSettings | None:
        raw = client.get(self._keys.draft(realm))
        if raw is None:
            return None
        entry = json.loads(raw)
        decoded = self._decode(entry["data"], realm, lenient=lenient)
        return DraftSettings(
            realm=realm,
            base_version=int(entry["base_version"]),
            settings=decoded.settings,
            updated_at=float(entry["updated_at"]),
            # A draft written before drafts had ids gets one from its content: the same on every read.
            draft_id=draft_id_of(entry, str(raw)),
            unusable=decoded.unusable,
        )

    def _history_entry(self, realm: str, raw: str, *, lenient: bool = False) -> SavedSettings:
        return self._saved_record(realm, json.loads(raw), lenient=lenient)

    def _find_in_history(self, client: Any, realm: str, version: int) -> SavedSettings:
        entries = client.lrange(self._keys.history(realm), 0, -1)
        versions = [int(json.loads(raw)["version"]) for raw in entries]
        if version not in versions:
            kept = ", ".join(str(v) for v in versions) or "none"
            raise NotFound(
                f"realm {realm} has no version {version} in its history (kept: {kept}); "
                f"see `mailworker settings history --realm {realm}`"
            )
        return self._history_entry(realm, entries[versions.index(version)])

    def _check_base(self, realm: str, base_version: int, current: int, *, from_draft: bool = False) -> None:
        if base_version == current:
            return
        message = conflict_message(realm, base_version, current)
        if from_draft:
            # The stale draft stays; saving it again would conflict again until it is discarded.
            message += f" (discard the old draft first: `mailworker settings revert --realm {realm}`)"
        raise ConflictError(message)

    def _execute_or_conflict(self, pipe: Any, realm: str, base_version: int) -> None:
        try:
            pipe.execute()
        except WatchError:
            current = self.version(realm)
            if current != base_version:
                raise ConflictError(conflict_message(realm, base_version, current)) from None
            raise ConflictError(
                f"realm {realm}: the draft was changed by someone else during this save; run "
                f"`mailworker settings show --realm {realm} --draft` and save again"
            ) from None

    def _queue_write(self, pipe: Any, record: SavedSettings) -> None:
        entry = {"version": record.version, "data": encode_settings(record.settings, self._box, realm=self._sealed_as(record.realm)),
                 "saved_at": record.saved_at, "note": record.note, "by": record.by}  # fmt: skip
        queue_saved(pipe, self._keys, record.realm, entry, self.history_size)

    def _encode_draft(self, draft: DraftSettings) -> str:
        entry = {
            "id": draft.draft_id,
            "base_version": draft.base_version,
            "data": encode_settings(draft.settings, self._box, realm=self._sealed_as(draft.realm)),
            "updated_at": draft.updated_at,
        }
        return stored_json(entry)
