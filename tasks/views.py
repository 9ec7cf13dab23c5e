"""What readers see of realms, settings, saved versions and dead letters: one JSON shape for the CLI's
--json, the HTTP API and the web console, so the three never disagree on a field name or a time format.

Times are ISO 8601 UTC strings; secrets are the mask; stored text is as stored (each reader escapes it
for its own medium: the terminal, HTML).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

from config.edits import Change, diff_settings
from config.errors import InvalidInput
from config.smtp import SmtpSettings
from config.store import DraftSettings, SavedSettings, SettingsStore
from worker.jobs.deadletters import DeadLetter

T = TypeVar("T")


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, e.g. 2026-11-30T09:15:02Z; None stays None."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(float(timestamp), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_iso_times(data: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """`data` with the named Unix-time fields as ISO 8601 UTC (the JSON shape every reader gets)."""
    return {name: iso(value) if name in fields and isinstance(value, int | float) else value
            for name, value in data.items()}  # fmt: skip


# A job's status and a bulk job's progress: their Unix times, shown as ISO 8601 by every reader.
STATUS_TIMES = ("sent_at", "died_at", "date_done")
PROGRESS_TIMES = ("created_at", "started_at", "finished_at")


def status_json(info: dict[str, Any]) -> dict[str, Any]:
    """One job's status (tasks/status.py) as `status --json` and `GET /v1/jobs/{id}` show it."""
    return with_iso_times(info, STATUS_TIMES)


def progress_json(progress: dict[str, Any]) -> dict[str, Any]:
    """A bulk job's progress as `job --json` and `GET /v1/bulk/{id}` show it."""
    return with_iso_times(progress, PROGRESS_TIMES)


def settings_json(settings: SmtpSettings, source: str, version: int) -> dict[str, Any]:
    """JSON names (secrets masked) plus where they come from: "saved" or "draft" (version: its base)."""
    return {**settings.to_public(), "version": version, "source": source}


def saved_json(saved: SavedSettings) -> dict[str, Any]:
    """A saved version with what it changed, and the secrets it holds that cannot be used any more."""
    data = {**settings_json(saved.settings, "saved", saved.version),
            "changes": [change.to_json() for change in saved.changes]}  # fmt: skip
    if saved.unusable:
        data["unusable"] = dict(saved.unusable)
    return data


def draft_json(store: SettingsStore, draft: DraftSettings) -> dict[str, Any]:
    """The draft with its id (a save names it) and what saving it would change."""
    data = {**settings_json(draft.settings, "draft", draft.base_version), "draft_id": draft.draft_id,
            "pending_changes": [change.to_json() for change in pending_changes(store, draft)]}  # fmt: skip
    if draft.unusable:
        data["unusable"] = dict(draft.unusable)
    return data


def pending_changes(store: SettingsStore, draft: DraftSettings) -> list[Change]:
    """What saving the draft would change."""
    saved = store.saved(draft.realm, lenient=True)
    return diff_settings(saved.settings if saved is not None else None, draft.settings)


def history_json(version: dict[str, Any]) -> dict[str, Any]:
    """One saved version as SettingsStore.public_history reads it, with its time in ISO 8601."""
    return {**version, "saved_at": iso(version["saved_at"])}


def realm_rows(names: list[str]) -> list[dict[str, Any]]:
    """Each realm's saved version, when and by whom it was saved, and whether a draft is pending: read as
    stored, nothing decrypted (needs no MAILWORKER_SECRET_KEY)."""
    from worker.runtime import runtime

    rt = runtime()
    pipe = rt.redis.pipeline(transaction=False)
    for name in names:
        pipe.hmget(rt.keys.saved(name), "version", "saved_at", "by")
        pipe.exists(rt.keys.draft(name))
    replies = pipe.execute()
    rows = []
    for index, name in enumerate(names):
        version, saved_at, by = replies[2 * index]
        rows.append({
            "realm": name, "version": int(version or 0), "saved_at": iso(float(saved_at)) if saved_at else None,
            "by": by or None, "draft_pending": bool(replies[2 * index + 1]),
        })  # fmt: skip
    return rows


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter without its job's context (personal data, links), times in ISO 8601."""
    return with_iso_times(letter.public(), ("died_at", "first_attempt_at"))


def page(
    items: Sequence[T],
    *,
    key: Any,
    after: str | None,
    limit: int,
    fields: tuple[str, str] = ("--after", "--limit"),
) -> tuple[list[T], str | None]:
    """One page of `items` (already in order): those after the one whose key(item) == `after`, at most
    `limit`; and the key to pass as `after` for the next page (None: this page is the last). `fields`
    name the two in errors: the CLI's options, or the API's query parameters."""
    if limit < 1:
        raise InvalidInput.one(fields[1], "must be at least 1")
    start = 0
    if after is not None:
        keys = [key(item) for item in items]
        if after not in keys:
            raise InvalidInput.one(
                fields[0], f"{after!r} is not in the list (it may have expired): start over"
            )
        start = keys.index(after) + 1
    chunk = list(items[start : start + limit])
    more = start + limit < len(items)
    return chunk, (key(chunk[-1]) if more and chunk else None)
