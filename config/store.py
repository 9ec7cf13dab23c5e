"""Per-realm SMTP settings in Redis: draft, save, revert, history, rollback.

Layout (key names in config/keys.py):
- saved:   hash {version, data, saved_at, note}; `data` is the settings' JSON with every secret stored only
           encrypted (`password_encrypted`, `oauth_client_secret_encrypted`), never in clear.
- draft:   string JSON {base_version, data, updated_at}: the unsaved edit, testable before saving.
- history: list of JSON {version, data, saved_at, note}, newest first, trimmed to `history_size`.
- realms:  set of realm names that have saved settings.

A save commits only if nobody saved since the edit started (WATCH/MULTI): no lost update.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.exceptions import WatchError

from config.crypto import MASK, SecretBox
from config.epoch import Epoch, queue_epoch, read_epoch, read_wipe, record_wipe
from config.errors import ConflictError, InvalidInput, NotFound
from config.keys import Keys
from config.names import check_realm
from config.smtp import CREDENTIAL_BOUND_FIELDS, SECRET_FIELDS, SmtpSettings, parse_smtp_settings

if TYPE_CHECKING:
    from config.settings import ServiceSettings

DEFAULT_HISTORY_SIZE = 20
# Rollback needs a few versions to go back to; fewer than this makes history useless.
MIN_HISTORY_SIZE = 10
T = TypeVar("T")
SECRET_LABELS = {"password": "password", "oauth_client_secret": "OAuth2 client secret"}


@dataclass(frozen=True)
class SavedSettings:
    realm: str
    version: int
    settings: SmtpSettings
    saved_at: float
    note: str | None = None


@dataclass(frozen=True)
class DraftSettings:
    realm: str
    base_version: int
    settings: SmtpSettings
    updated_at: float


# ---- pure helpers: editing ----------------------------------------------------------------------------


def apply_changes(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with `changes` (JSON names) applied; a value of None clears the field back to its default."""
    merged = dict(data)
    for name, value in changes.items():
        name = "from" if name == "from_address" else name
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def changed_credential_field(before: SmtpSettings, after: SmtpSettings) -> tuple[str, Any, Any] | None:
    """The first field a stored secret is bound to that differs, as (field, before, after)."""
    old, new = before.to_public(), after.to_public()
    for name in CREDENTIAL_BOUND_FIELDS:
        if old[name] != new[name]:
            return name, old[name], new[name]
    return None


def edit_settings(base: SmtpSettings | None, changes: Mapping[str, Any]) -> SmtpSettings:
    """Apply `changes` onto `base` and validate (raises InvalidInput naming the fields).

    A secret given as MASK, or not given at all, keeps the base's stored secret, but only while the
    fields it is bound to (host, port, username, ...) are unchanged: otherwise an edit could send the
    stored password to a server of the editor's choosing without ever knowing it.
    """
    data = secretless_data(base) if base is not None else {}
    data = apply_changes(data, {k: v for k, v in changes.items() if not (k in SECRET_FIELDS and v == MASK)})
    kept: list[str] = []
    for name in SECRET_FIELDS:
        if name in changes and changes[name] != MASK:
            continue  # a new value, or None to clear it
        stored = base.secret(name) if base is not None else None
        if stored is None:
            if changes.get(name) == MASK:
                raise InvalidInput.one(
                    name, f"is masked ({MASK}) but no {SECRET_LABELS[name]} is stored: enter the value itself"
                )
            continue
        data[name] = stored
        kept.append(name)
    # A stored secret the auth_type does not use is forgotten, not asked for again: switching a realm
    # from password to xoauth2 (or back) must not need the secret of the other kind.
    in_use = "oauth_client_secret" if data.get("auth_type") == "xoauth2" else "password"
    for name in [n for n in kept if n != in_use and changes.get(n) != MASK]:
        data.pop(name)
        kept.remove(name)
    edited = parse_smtp_settings(data)
    if base is not None and kept:
        check_credentials_unchanged(base, edited, kept[0])
    return edited


def check_credentials_unchanged(base: SmtpSettings, edited: SmtpSettings, secret: str) -> None:
    changed = changed_credential_field(base, edited)
    if changed is None:
        return
    field, before, after = changed
    label = SECRET_LABELS[secret]
    raise InvalidInput.one(
        secret,
        f"{field} changed from {_shown(before)} to {_shown(after)}: enter the {label} again "
        f"(a stored {label} is never sent to a new server)",
    )


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def secretless_data(settings: SmtpSettings) -> dict[str, Any]:
    """JSON names without the secret fields: the base an edit starts from."""
    data = settings.to_public()
    for name in SECRET_FIELDS:
        data.pop(name, None)
    return data


# ---- pure helpers: encoding for Redis ------------------------------------------------------------------


def encrypted_name(name: str) -> str:
    return f"{name}_encrypted"


def encode_settings(settings: SmtpSettings, box: SecretBox) -> dict[str, Any]:
    """JSON-ready settings with each secret only as ciphertext under `<name>_encrypted`."""
    data = secretless_data(settings)
    for name in SECRET_FIELDS:
        value = settings.secret(name)
        if value is not None:
            data[encrypted_name(name)] = box.encrypt(value)
    return data


def decode_settings(data: Mapping[str, Any], box: SecretBox) -> SmtpSettings:
    """Stored data back to settings; a secret that cannot be decrypted is a ConfigError (SecretBox)."""
    plain = dict(data)
    for name in SECRET_FIELDS:
        token = plain.pop(encrypted_name(name), None)
        plain.pop(name, None)  # never stored in clear; ignore anything that claims to be
        if token is not None:
            plain[name] = box.decrypt(token)
    return parse_smtp_settings(plain)


def rotate_data(data: dict[str, Any], box: SecretBox) -> int:
    """Re-encrypt every secret of stored data in place with the first key; returns how many."""
    count = 0
    for name in SECRET_FIELDS:
        token = data.get(encrypted_name(name))
        if token is not None:
            data[encrypted_name(name)] = box.rotate(token)
            count += 1
    return count


def conflict_message(realm: str, edit_version: int, current: int) -> str:
    return (
        f"realm {realm}: the settings were saved by someone else since this edit started "
        f"(edit from version {edit_version}, now version {current}); run `mailworker settings show "
        f"--realm {realm}`, re-apply your change and save again"
    )


def _escape_glob(text: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


# ---- the store -----------------------------------------------------------------------------------------


class SettingsStore:
    def __init__(
        self,
        redis: redis.Redis,
        keys: Keys,
        box: SecretBox | Callable[[], SecretBox],
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> None:
        if history_size < MIN_HISTORY_SIZE:
            raise ValueError(f"history_size must be at least {MIN_HISTORY_SIZE}")
        self._redis = redis
        self._keys = keys
        # A callable is resolved on first use: readers of non-secret fields (producers, `stats`) need no key.
        self._box_source = box
        self.history_size = history_size

    @property
    def _box(self) -> SecretBox:
        if not isinstance(self._box_source, SecretBox):
            self._box_source = self._box_source()
        return self._box_source

    # ---- reading --------------------------------------------------------------------------------------

    def version(self, realm: str) -> int:
        """The saved version, 0 if never saved: one HGET, so workers can check their cache per job."""
        value = self._redis.hget(self._keys.saved(realm), "version")
        return int(value) if value is not None else 0

    def saved(self, realm: str) -> SavedSettings | None:
        return self._read_saved(self._redis, realm)

    def draft(self, realm: str) -> DraftSettings | None:
        return self._read_draft(self._redis, realm)

    def saved_fields(self, realm: str) -> dict[str, Any] | None:
        """The saved settings as stored (JSON names), secrets still encrypted, nothing decrypted.

        For callers that need no secret, such as producers checking a realm's `allow_utf8`: they work
        without MAILWORKER_SECRET_KEY.
        """
        raw = self._redis.hget(self._keys.saved(realm), "data")
        return dict(json.loads(str(raw))) if raw is not None else None

    def effective(self, realm: str, *, use_draft: bool = True) -> tuple[SmtpSettings, str, int]:
        """(settings, "draft" | "saved", version): the draft when there is one and use_draft, else saved."""
        if use_draft:
            draft = self.draft(realm)
            if draft is not None:
                return draft.settings, "draft", draft.base_version
        saved = self.saved(realm)
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

    def history(self, realm: str) -> list[SavedSettings]:
        """The last saved versions, newest first (secrets inside: mask with to_public on output)."""
        entries = self._redis.lrange(self._keys.history(realm), 0, -1)
        return [self._history_entry(realm, str(raw)) for raw in entries]

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
            base, base_version = self._edit_base(pipe, realm)
            draft = DraftSettings(realm, base_version, edit_settings(base, changes), time.time())
            pipe.multi()
            pipe.set(draft_key, self._encode_draft(draft))
            return draft

        # Two people editing the same draft: WATCH makes the second re-read and re-apply its changes.
        return self._retrying_transaction([draft_key, saved_key], edit)

    def save(
        self,
        realm: str,
        changes: Mapping[str, Any] | None = None,
        *,
        expected_version: int | None = None,
        note: str | None = None,
    ) -> SavedSettings:
        """Apply `changes` onto the draft (or the saved settings), validate, and save as the next version.

        The edit's base version (the draft's, `expected_version`, or the version read here) must still be
        the saved version when the write commits; otherwise ConflictError and nothing is written.
        """
        check_realm(realm)
        draft_key, saved_key = self._keys.draft(realm), self._keys.saved(realm)
        with self._redis.pipeline() as pipe:
            pipe.watch(saved_key, draft_key)
            current = self._read_version(pipe, realm)
            draft = self._read_draft(pipe, realm)
            if draft is not None:
                self._check_base(realm, draft.base_version, current, from_draft=True)
            if expected_version is not None:
                self._check_base(realm, expected_version, current)
            saved = self._read_saved(pipe, realm) if draft is None else None
            base = draft.settings if draft is not None else (saved.settings if saved is not None else None)
            if base is None and not changes:
                raise NotFound(
                    f"realm {realm} has no SMTP settings and no draft to save: run "
                    f"`mailworker settings save --realm {realm} --from ... --host ...`"
                )
            record = SavedSettings(realm, current + 1, edit_settings(base, changes or {}), time.time(), note)
            pipe.multi()
            self._queue_write(pipe, record)
            pipe.delete(draft_key)
            self._execute_or_conflict(pipe, realm, current)
        return record

    def revert(self, realm: str) -> bool:
        """Discard the draft (the Email tab's Revert button); True if there was one."""
        return bool(self._redis.delete(self._keys.draft(realm)))

    def rollback(self, realm: str, to_version: int, *, note: str | None = None) -> SavedSettings:
        """Save the settings of an earlier version (from history) as a new version.

        A pending draft is left alone: it was edited from an older version, so saving it later is refused
        as a conflict instead of silently undoing the rollback.
        """
        check_realm(realm)
        saved_key = self._keys.saved(realm)
        with self._redis.pipeline() as pipe:
            pipe.watch(saved_key)
            current = self._read_version(pipe, realm)
            old = self._find_in_history(pipe, realm, to_version)
            record = SavedSettings(
                realm, current + 1, old.settings, time.time(), note or f"rollback to version {to_version}"
            )
            pipe.multi()
            self._queue_write(pipe, record)
            self._execute_or_conflict(pipe, realm, current)
        return record

    def rotate_secrets(self) -> int:
        """Re-encrypt every stored secret (saved, drafts, history) with the first key; returns the count.

        Run after prepending a new key to MAILWORKER_SECRET_KEY; then the old key can be dropped.
        """
        pattern = f"{_escape_glob(self._keys.prefix)}:realm:*"
        count = 0
        for key in self._redis.scan_iter(match=pattern, count=500):
            if key.endswith(":saved"):
                count += self._rotate_key(key, self._rotate_saved)
            elif key.endswith(":draft"):
                count += self._rotate_key(key, self._rotate_draft)
            elif key.endswith(":history"):
                count += self._rotate_key(key, self._rotate_history)
        return count

    # ---- internals ------------------------------------------------------------------------------------

    def _read_version(self, client: Any, realm: str) -> int:
        value = client.hget(self._keys.saved(realm), "version")
        return int(value) if value is not None else 0

    def _read_saved(self, client: Any, realm: str) -> SavedSettings | None:
        fields = client.hgetall(self._keys.saved(realm))
        if not fields:
            return None
        return SavedSettings(
            realm=realm,
            version=int(fields["version"]),
            settings=decode_settings(json.loads(fields["data"]), self._box),
            saved_at=float(fields["saved_at"]),
            note=fields.get("note") or None,
        )

    def _read_draft(self, client: Any, realm: str) -> DraftSettings | None:
        raw = client.get(self._keys.draft(realm))
        if raw is None:
            return None
        entry = json.loads(raw)
        return DraftSettings(
            realm=realm,
            base_version=int(entry["base_version"]),
            settings=decode_settings(entry["data"], self._box),
            updated_at=float(entry["updated_at"]),
        )

    def _edit_base(self, client: Any, realm: str) -> tuple[SmtpSettings | None, int]:
        """Where an edit starts: the draft, else the saved settings, else nothing (version 0)."""
        draft = self._read_draft(client, realm)
        if draft is not None:
            return draft.settings, draft.base_version
        saved = self._read_saved(client, realm)
        if saved is not None:
            return saved.settings, saved.version
        return None, 0

    def _history_entry(self, realm: str, raw: str) -> SavedSettings:
        entry = json.loads(raw)
        return SavedSettings(
            realm=realm,
            version=int(entry["version"]),
            settings=decode_settings(entry["data"], self._box),
            saved_at=float(entry["saved_at"]),
            note=entry.get("note") or None,
        )

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
        data = encode_settings(record.settings, self._box)
        realm = record.realm
        pipe.hset(
            self._keys.saved(realm),
            mapping={
                "version": record.version,
                "data": json.dumps(data, sort_keys=True, ensure_ascii=False),
                "saved_at": repr(record.saved_at),
                "note": record.note or "",
            },
        )
        entry = {"version": record.version, "data": data, "saved_at": record.saved_at, "note": record.note}
        pipe.lpush(self._keys.history(realm), json.dumps(entry, sort_keys=True, ensure_ascii=False))
        pipe.ltrim(self._keys.history(realm), 0, self.history_size - 1)
        pipe.sadd(self._keys.realms(), realm)
        queue_epoch(pipe, self._keys)

    def _encode_draft(self, draft: DraftSettings) -> str:
        entry = {
            "base_version": draft.base_version,
            "data": encode_settings(draft.settings, self._box),
            "updated_at": draft.updated_at,
        }
        return json.dumps(entry, sort_keys=True, ensure_ascii=False)

    def _rotate_key(self, key: str, rotate: Callable[[Any, str], int]) -> int:
        """Re-encrypt one key's secrets under WATCH, so a concurrent save is never overwritten."""
        return self._retrying_transaction([key], lambda pipe: rotate(pipe, key))

    def _retrying_transaction(self, keys: list[str], body: Callable[[Any], T]) -> T:
        """Run `body` (reads, then pipe.multi() and queued writes) until no watched key changed meanwhile.

        Only for writes that are safe to re-apply on fresh data (draft edits, re-encryption); a save
        must not be retried, since its base version would silently move.
        """
        while True:
            with self._redis.pipeline() as pipe:
                try:
                    pipe.watch(*keys)
                    result = body(pipe)
                    pipe.execute()
                    return result
                except WatchError:
                    continue

    def _rotate_saved(self, pipe: Any, key: str) -> int:
        raw = pipe.hget(key, "data")
        if raw is None:
            return 0
        data = json.loads(raw)
        count = rotate_data(data, self._box)
        pipe.multi()
        pipe.hset(key, "data", json.dumps(data, sort_keys=True, ensure_ascii=False))
        return count

    def _rotate_draft(self, pipe: Any, key: str) -> int:
        raw = pipe.get(key)
        if raw is None:
            return 0
        entry = json.loads(raw)
        count = rotate_data(entry["data"], self._box)
        pipe.multi()
        pipe.set(key, json.dumps(entry, sort_keys=True, ensure_ascii=False), keepttl=True)
        return count

    def _rotate_history(self, pipe: Any, key: str) -> int:
        entries = [json.loads(raw) for raw in pipe.lrange(key, 0, -1)]
        count = sum(rotate_data(entry["data"], self._box) for entry in entries)
        if not entries:
            return 0
        pipe.multi()
        pipe.delete(key)
        pipe.rpush(key, *(json.dumps(e, sort_keys=True, ensure_ascii=False) for e in entries))
        return count


def open_store(settings: ServiceSettings | None = None) -> SettingsStore:
    """The store of this process (worker.runtime), or one built from `settings` (its own connection).

    The box comes first: a missing MAILWORKER_SECRET_KEY is reported before Redis is even contacted.
    """
    from worker.runtime import Runtime, runtime  # imported here: worker depends on config, not back

    resources = runtime() if settings is None else Runtime(settings)
    box = resources.box
    return SettingsStore(resources.redis, resources.keys, box)
