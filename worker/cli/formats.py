"""What the commands agree on for scripts: exit codes, times, durations, pages, JSON Lines.

Exit codes (docs/cli.md lists them with the commands that use each):

    0    done; for a check (health, settings test, status, job --watch): the good outcome
    1    an error (one line on stderr), or the bad outcome of a check: a failing health check, a failed
         Test Connection, a job that ended without delivery (dead-lettered, dropped), a bulk job that
         ended failed or cancelled
    2    a usage error (argparse's convention): an unknown option, a missing argument
    3    no such thing: an unknown job id (`status`, `job`, `dead show`, `dead requeue`)
    4    not ended yet: a job that waits in a queue or for its retry (`status`)
    130  interrupted (Ctrl-C)
    141  the reader of the output went away (`... | head`), as a shell reports SIGPIPE
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from config.errors import InvalidInput
from config.printable import json_text

OK, FAILED, USAGE, NOT_FOUND, NOT_ENDED, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 4, 130, 141

T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)\Z")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, e.g. 2026-11-30T09:15:02Z; None stays None."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(float(timestamp), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_iso_times(data: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """`data` with the named Unix-time fields as ISO 8601 UTC (the JSON shape every command prints)."""
    return {name: iso(value) if name in fields and isinstance(value, int | float) else value
            for name, value in data.items()}  # fmt: skip


def duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '1d', '2w' -> seconds (for --older-than and the like)."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise InvalidInput.one("duration", f"{text!r} is not a duration like 90s, 15m, 12h, 1d or 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def page(items: Sequence[T], *, key: Any, after: str | None, limit: int) -> tuple[list[T], str | None]:
    """One page of `items` (already in order): those after the one whose key(item) == `after`, at most
    `limit`; and the key to pass as `after` for the next page (None: this page is the last)."""
    if limit < 1:
        raise InvalidInput.one("--limit", "must be at least 1")
    start = 0
    if after is not None:
        keys = [key(item) for item in items]
        if after not in keys:
            raise InvalidInput.one(
                "--after", f"{after!r} is not in the list (it may have expired): start over"
            )
        start = keys.index(after) + 1
    chunk = list(items[start : start + limit])
    more = start + limit < len(items)
    return chunk, (key(chunk[-1]) if more and chunk else None)


def json_line(data: Any) -> str:
    """One JSON object on one line (JSON Lines, for --watch --json)."""
    return json_text(data, sort_keys=True, default=str)


def cut_notice(shown: int, next_after: str | None, command: str) -> str | None:
    """The line a text listing ends with when it was cut: how to get the rest."""
    if next_after is None:
        return None
    return f"(first {shown} shown; the next page: `{command} --after {next_after}`)"
