"""How `mailworker settings` shows settings, versions and changes (text and JSON); stored text escaped."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from config.edits import Change, diff_settings
from config.smtp import SmtpSettings
from config.store import DraftSettings, SavedSettings, SettingsStore
from worker.cli.common import print_json
from worker.cli.common import shown as escaped


def settings_json(settings: SmtpSettings, source: str, version: int) -> dict[str, Any]:
    """JSON names (secrets masked) plus where they come from."""
    return {**settings.to_public(), "version": version, "source": source}


def history_json(version: dict[str, Any]) -> dict[str, Any]:
    """One saved version as `settings history --json` prints it (config.store.public_history)."""
    return {**version, "saved_at": when(version["saved_at"])}


def print_saved(saved: SavedSettings, as_json: bool) -> None:
    if as_json:
        changes = [change.to_json() for change in saved.changes]
        print_json({**settings_json(saved.settings, "saved", saved.version), "changes": changes})
        return
    suffix = f" ({escaped(saved.note)})" if saved.note else ""
    print(f"saved {saved.realm} version {saved.version}{suffix}")
    print_changes("changes", list(saved.changes))


def pending_changes(store: SettingsStore, draft: DraftSettings) -> list[Change]:
    """What saving the draft would change."""
    saved = store.saved(draft.realm, lenient=True)
    return diff_settings(saved.settings if saved is not None else None, draft.settings)


def print_changes(title: str, changes: list[Change]) -> None:
    print(f"{title}: none" if not changes else f"{title}:")
    for change in changes:
        print(f"  {escaped(str(change))}")


def aligned(data: dict[str, Any]) -> str:
    """`field  value` lines, the values in one column."""
    order = ["version", "source"] + [name for name in data if name not in ("version", "source")]
    width = max(len(name) for name in order)
    return "\n".join(f"{name.ljust(width)}  {shown(data[name])}" for name in order)


def shown(value: Any) -> str:
    """A setting's value on one line; stored text is escaped (a host or a name may hold control codes)."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return escaped(",".join(str(v) for v in value)) or "-"
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return escaped(str(value))


def when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
