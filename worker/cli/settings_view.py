"""How `mailworker settings` shows settings, versions and changes (text and JSON); stored text escaped."""

from __future__ import annotations

import json
from typing import Any

from config.edits import Change
from config.store import SavedSettings
from tasks.views import saved_json
from worker.cli.common import print_json
from worker.cli.common import shown as escaped


def print_saved(saved: SavedSettings, as_json: bool) -> None:
    if as_json:
        print_json(saved_json(saved))
        return
    suffix = f" ({escaped(saved.note)})" if saved.note else ""
    print(f"saved {saved.realm} version {saved.version}{suffix}")
    print_changes("changes", list(saved.changes))


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
