"""Backup and restore of the config store: every realm's saved settings, history and draft, as stored,
and the same of its secondary SMTP server when it has one (`secondary`, its secrets sealed to `realm:secondary`).

An export is one JSON document (`FORMAT`): nothing in it is decrypted, so exporting needs no secret key,
and each secret stays sealed to its realm and destination (config/codec.py) with the key named by its key
id (`key_ids` lists them): the file is as safe as the Redis it came from, and useless without the key.
Keep the key apart from the file.

An import checks the whole document before it writes anything: its shape, every version's settings
(the rules of config/smtp.py), and that MAILWORKER_SECRET_KEY holds the key of every sealed secret (a
missing key is refused: restoring secrets nobody can open restores nothing). Then, per realm:

- absent from the store: restored as exported (the same versions, times, authors, history and draft);
- present: skipped, unless `replace`: then the exported saved settings become the realm's next version
  (its history and a pending draft stay; the draft, edited from an older version, can no longer be saved
  without a conflict), noted as imported.

A realm whose saved settings hold a secret that no longer matches them (altered outside `mailworker
settings` before the export) is restored as it was and reported: its jobs fail with reason `settings`
until the secret is entered again, as they did before.

Importing into a store that holds no epoch (wiped: config/epoch.py) starts a new epoch and clears the
wipe notice: the restore is the answer to it (what was queued then stays lost; the notice is logged).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import WatchError

from config.codec import read_settings, unusable_message
from config.crypto import SecretBox
from config.edits import check_note
from config.epoch import queue_epoch, read_epoch, read_wipe
from config.errors import ConfigError, ConflictError, InvalidInput, NotFound
from config.keys import SECONDARY, Keys, ServerKeys, channel
from config.names import check_realm
from config.records import history_entry, queue_saved, queue_saved_hash, read_realm, stored_json

FORMAT = "iam-mail-worker settings export"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ExportedVersion(_Strict):
    version: int = Field(ge=1)
    data: dict[str, Any]
    saved_at: float = Field(ge=0)
    note: str | None = None
    by: str | None = None


class ExportedDraft(_Strict):
    id: str | None = None
    base_version: int = Field(ge=0)
    data: dict[str, Any]
    updated_at: float = Field(ge=0)


class ExportedServer(_Strict):
    """A settings record as stored: saved version, draft, history (the realm's primary, or its secondary)."""

    saved: ExportedVersion
    draft: ExportedDraft | None = None
    history: list[ExportedVersion] = Field(default_factory=list)


class ExportedRealm(ExportedServer):
    realm: str
    secondary: ExportedServer | None = None  # the realm's secondary SMTP server, when it has one

    @field_validator("realm")
    @classmethod
    def _realm_name(cls, value: str) -> str:
        try:
            return check_realm(value)
        except InvalidInput as error:  # pydantic names where, from a ValueError
            raise ValueError(error.problems[0][1]) from None


class SettingsExport(_Strict):
    format: Literal["iam-mail-worker settings export"]
    format_version: Literal[1]
    exported_at: str
    key_ids: list[str] = Field(default_factory=list)
    realms: list[ExportedRealm]


# ---- export ------------------------------------------------------------------------------------------------


def export_settings(
    client: Any, keys: Keys, realms: Iterable[str] = (), now: float | None = None
) -> dict[str, Any]:
    """The export document of `realms` (default: every realm with saved settings)."""
    wanted = list(realms)
    names = wanted or sorted(str(name) for name in client.smembers(keys.realms()))
    exported = []
    for realm in names:
        check_realm(realm)
        records = read_realm(client, keys, realm)
        if records is None:
            if wanted:
                raise NotFound(f"realm {realm} has no saved settings to export (see `mailworker realms`)")
            continue  # deleted between the listing and the read
        secondary = read_realm(client, ServerKeys(keys.prefix), realm)
        exported.append({"realm": realm, **records, **({"secondary": secondary} if secondary else {})})
    when = time.gmtime(time.time() if now is None else now)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
        "key_ids": sorted(set(_key_ids(exported))),
        "realms": exported,
    }
    return document


def _key_ids(value: Any) -> Iterable[str]:
    """The key id of every sealed secret in `value` (config/crypto.py Sealed)."""
    if isinstance(value, dict):
        if value.get("v") == 2 and isinstance(value.get("kid"), str) and "ct" in value:
            yield value["kid"]
            return
        for item in value.values():
            yield from _key_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _key_ids(item)


# ---- import ------------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    restored: list[str] = field(default_factory=list)  # absent before: written as exported
    replaced: dict[str, int] = field(default_factory=dict)  # realm -> the version the import saved
    skipped: dict[str, int] = field(default_factory=dict)  # realm -> its version in the store (kept)
    unusable: dict[str, str] = field(default_factory=dict)  # realm -> why its saved secret cannot be used
    wipe_cleared: dict[str, str] | None = None  # the wipe notice this import answered

    def as_json(self) -> dict[str, Any]:
        return {"restored": self.restored, "replaced": self.replaced, "skipped": self.skipped,
                "unusable": self.unusable, "wipe_cleared": self.wipe_cleared}  # fmt: skip


def check_export(
    document: Any, box: SecretBox, realms: Iterable[str] = ()
) -> tuple[SettingsExport, dict[str, str]]:
    """The document, parsed and checked (InvalidInput naming where; ConfigError for a missing key),
    narrowed to `realms` when given; and the realms whose saved secret cannot be used, with why."""
    try:
        export = SettingsExport.model_validate(document)
    except ValidationError as error:
        raise InvalidInput([(_where(item["loc"]), item["msg"].removeprefix("Value error, "))
                            for item in error.errors()[:5]]) from None  # fmt: skip
    wanted = set(realms)
    if wanted:
        missing = sorted(wanted - {r.realm for r in export.realms})
        if missing:
            raise NotFound(f"the export holds no realm {', '.join(missing)}")
        export = export.model_copy(update={"realms": [r for r in export.realms if r.realm in wanted]})
    seen: set[str] = set()
    unusable: dict[str, str] = {}
    for number, exported in enumerate(export.realms):
        if exported.realm in seen:
            raise InvalidInput.one(f"realms[{number}].realm", f"{exported.realm} appears twice")
        seen.add(exported.realm)
        for where, sealed_as, data in _versions(exported):
            try:
                decoded = read_settings(data, box, realm=sealed_as)
            except ConfigError as error:  # a key MAILWORKER_SECRET_KEY does not hold
                raise ConfigError(f"realm {exported.realm}, {where}: {error}") from None
            except InvalidInput as error:
                raise InvalidInput.one(f"realms[{number}].{where}.data", str(error)) from None
            if where == "saved" and decoded.unusable:
                unusable[exported.realm] = unusable_message(exported.realm, decoded.unusable)
    return export, unusable


def _versions(exported: ExportedRealm) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, the name its secrets are sealed to, stored data) of every version the realm's export holds,
    its secondary server's included."""
    records: list[tuple[str, str, ExportedServer]] = [("", exported.realm, exported)]
    if exported.secondary is not None:
        records.append(("secondary.", channel(exported.realm, SECONDARY), exported.secondary))
    versions = []
    for prefix, sealed_as, record in records:
        versions.append((f"{prefix}saved", sealed_as, record.saved.data))
        versions += [
            (f"{prefix}history[{number}]", sealed_as, entry.data)
            for number, entry in enumerate(record.history)
        ]
        if record.draft is not None:
            versions.append((f"{prefix}draft", sealed_as, record.draft.data))
    return versions


def _where(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "document"


def import_settings(
    client: Any, keys: Keys, box: SecretBox, document: Any, *, realms: Iterable[str] = (), replace: bool = False,
    by: str | None = None, history_size: int, dry_run: bool = False, now: float | None = None,
) -> ImportReport:  # fmt: skip
    """Check the whole document, then write it realm by realm (see the module's docstring)."""
    by = check_note(by, field="by", limit=200)
    export, unusable = check_export(document, box, realms)
    report = ImportReport(unusable=unusable)
    wiped = read_epoch(client, keys) is None
    for exported in export.realms:
        _import_realm(client, keys, exported, export.exported_at, report, replace=replace, by=by,
                      history_size=history_size, dry_run=dry_run, now=now)  # fmt: skip
    if wiped and (report.restored or report.replaced):
        report.wipe_cleared = read_wipe(client, keys)
        if report.wipe_cleared is not None and not dry_run:
            client.delete(keys.wiped())
    return report


def _import_realm(
    client: Any, keys: Keys, exported: ExportedRealm, exported_at: str, report: ImportReport, *, replace: bool,
    by: str | None, history_size: int, dry_run: bool, now: float | None,
) -> None:  # fmt: skip
    realm = exported.realm
    second = ServerKeys(keys.prefix)
    with client.pipeline() as pipe:
        # A save landing meanwhile makes the import of this realm fail whole: nothing half-written.
        pipe.watch(keys.saved(realm), second.saved(realm))
        current = pipe.hget(keys.saved(realm), "version")
        current_second = pipe.hget(second.saved(realm), "version")
        if current is not None and not replace:
            report.skipped[realm] = int(current)
            return
        pipe.multi()
        if current is None:
            _queue_restore(pipe, keys, realm, exported, history_size)
            if exported.secondary is not None:
                _queue_restore(pipe, second, realm, exported.secondary, history_size)
            report.restored.append(realm)
        else:
            stamp = time.time() if now is None else now
            report.replaced[realm] = _queue_replace(pipe, keys, realm, exported, int(current), exported_at, by,
                                                    stamp, history_size)  # fmt: skip
            if exported.secondary is not None:
                _queue_replace(pipe, second, realm, exported.secondary, int(current_second or 0), exported_at,
                               by, stamp, history_size)  # fmt: skip
        if not dry_run:
            try:
                pipe.execute()
            except WatchError:
                raise ConflictError(
                    f"realm {realm} was saved while it was being imported: nothing of it was written; "
                    f"import it again (--realm {realm}, with --replace to put the export's settings on top)"
                ) from None


def _queue_replace(
    pipe: Any, keys: Keys, realm: str, exported: ExportedServer, current: int, exported_at: str, by: str | None,
    now: float, history_size: int,
) -> int:  # fmt: skip
    """The exported saved settings as the record's next version (its history and draft stay); that version."""
    saved = exported.saved
    note = (f"imported: version {saved.version} of the export of {exported_at}"
            f"{f' (saved by {saved.by})' if saved.by else ''}")  # fmt: skip
    entry = {"version": current + 1, "data": saved.data, "saved_at": now, "note": note[:500], "by": by}
    queue_saved(pipe, keys, realm, entry, history_size)
    if current == 0:
        pipe.sadd(keys.realms(), realm)
    return current + 1


def _queue_restore(pipe: Any, keys: Keys, realm: str, exported: ExportedServer, history_size: int) -> None:
    """A record as it was exported: saved hash, history (newest first), draft."""
    pipe.delete(keys.history(realm), keys.draft(realm))
    history = exported.history or [exported.saved]
    pipe.rpush(
        keys.history(realm), *(stored_json(history_entry(v.model_dump())) for v in history[:history_size])
    )
    saved = exported.saved
    queue_saved_hash(pipe, keys, realm, saved.model_dump())
    if exported.draft is not None:
        pipe.set(keys.draft(realm), stored_json(exported.draft.model_dump(exclude_none=True)))
    pipe.sadd(keys.realms(), realm)
    queue_epoch(pipe, keys)
