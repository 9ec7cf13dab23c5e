"""A bulk upload streamed as NDJSON: the first line the job's header object, then one recipient per line.

    {"template": "maintenance-notice", "locale": "en", "context": {"window": "Sunday 02:00 UTC"}}
    {"email": "alice@example.com", "name": "Alice"}
    "bob@example.com"
    ...

The body is read as it arrives (chunks of bytes in, recipients out): 100,000 recipients never sit in memory
at once, only the line being read and the chunks `tasks.api.send_bulk` is about to write. Blank lines are
skipped; `recipients[i]` counts recipients, not lines. A line that is not JSON is 400 naming its line
number; a recipient that breaks a rule is 422 naming `recipients[i].field` (the rules are send_bulk's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from config.errors import InvalidInput
from worker.http.errors import ApiError

MEDIA_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
# A header holds the job's context (at most 64 KiB as JSON, escapes can double it); a recipient at most
# 8 KiB of context. A longer line is refused before it is buffered whole.
MAX_LINE_BYTES = 256 * 1024


def lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) of a body arriving in chunks split anywhere; blank lines are skipped.

    Raises ApiError 413 for a line over `max_line` bytes, as soon as the buffered part of it is.
    """
    buffer = bytearray()
    number = 0
    for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            number += 1
            line = bytes(buffer[start:end])
            start = end + 1
            _check_length(number, len(line), max_line)
            if line.strip():
                yield number, line
        del buffer[:start]
        _check_length(number + 1, len(buffer), max_line)
    if bytes(buffer).strip():
        yield number + 1, bytes(buffer)


def _check_length(number: int, length: int, max_line: int) -> None:
    if length > max_line:
        raise ApiError(413, f"line {number} is longer than {max_line} bytes (one header or recipient a line)")


def parse_line(number: int, line: bytes) -> Any:
    """One line's JSON value; 400 naming the line when it is not JSON (or not UTF-8)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, too deep
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
        raise ApiError(400, f"line {number} of the NDJSON body is not JSON: {reason}") from None


def read_upload(chunks: Iterable[bytes]) -> tuple[dict[str, Any], Iterator[Any]]:
    """The header object (first line) and the recipients that follow it, parsed as they are pulled."""
    numbered = lines(chunks)
    first = next(numbered, None)
    if first is None:
        raise InvalidInput.one(
            "", "the body is empty: first line the job's header object, then one recipient a line"
        )
    header = parse_line(*first)
    if not isinstance(header, dict):
        raise InvalidInput.one("", f"line {first[0]} must be the job's header: a JSON object with template, "
                                   "locale, context (the recipients follow, one a line)")  # fmt: skip

    def recipients() -> Iterator[Any]:
        for number, line in numbered:
            yield parse_line(number, line)

    return header, recipients()
