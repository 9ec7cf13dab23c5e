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

import re
from typing import Any

from config.errors import InvalidInput
from config.printable import json_text
from tasks.views import iso as iso  # the commands' formats: one import
from tasks.views import page as page
from tasks.views import with_iso_times as with_iso_times

OK, FAILED, USAGE, NOT_FOUND, NOT_ENDED, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 4, 130, 141

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)\Z")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '1d', '2w' -> seconds (for --older-than and the like)."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise InvalidInput.one("duration", f"{text!r} is not a duration like 90s, 15m, 12h, 1d or 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def json_line(data: Any) -> str:
    """One JSON object on one line (JSON Lines, for --watch --json)."""
    return json_text(data, sort_keys=True, default=str)


def cut_notice(shown: int, next_after: str | None, command: str) -> str | None:
    """The line a text listing ends with when it was cut: how to get the rest."""
    if next_after is None:
        return None
    return f"(first {shown} shown; the next page: `{command} --after {next_after}`)"
