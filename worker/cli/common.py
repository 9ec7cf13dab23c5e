"""Output helpers shared by the `mailworker` sub-commands: one clear line on error, JSON for scripts.

Whatever a command prints that it did not write itself (a dead letter's error, a recipient, a realm, a
note, an SMTP server's reply) went through `shown`: stored data comes from producers and remote servers,
and a terminal obeys the escape sequences in it (clear the screen, set the window title, rewrite the
line above, reorder text with bidi overrides). JSON output goes through `json_text`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from config.errors import NotFound
from config.printable import UNSAFE, json_text, shown
from worker.cli.formats import NOT_FOUND

__all__ = ["UNSAFE", "fail", "json_text", "names_a_thing", "print_json", "shown", "table"]


def print_json(data: Any) -> None:
    print(json_text(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = 1) -> int:
    print(f"error: {shown(message)}", file=sys.stderr)
    return code


def names_a_thing(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """For a command given an id (a job, a token): an unknown (or expired) one is exit 3, as for `status`
    (worker/cli/formats.py), not 1, which `job --watch` gives a job that ended failed or cancelled."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except NotFound as error:
            return fail(str(error), NOT_FOUND)

    return wrapper


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Aligned columns; every cell is shown(): a cell is stored data more often than not."""
    rows = [[shown(cell) for cell in row] for row in rows]
    headers = [shown(header) for header in headers]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)
