"""Untrusted text made printable: for terminals (one line, controls escaped) and for JSON readers.

Stored data comes from producers and remote servers (a dead letter's error, a recipient, a realm, a note,
an SMTP server's reply), and a terminal obeys the escape sequences in it (clear the screen, set the
window title, rewrite the line above, reorder text with bidi overrides); a log reader takes a line break
for a new record. The CLI (worker/cli/common.py) and the log formatter (worker/logs.py) both go through
these two functions.
"""

from __future__ import annotations

import json
import re
from typing import Any

# What a terminal or a log reader takes for something other than a character of this line: C0 controls
# (CR, LF, ESC, ...), DEL and the C1 controls (U+009B is CSI on some terminals), the Unicode line and
# paragraph separators, the bidi marks, embeddings, overrides and isolates, and lone surrogates (which
# no encoder writes: printing one raises).
_BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
UNSAFE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
# json.dumps escapes C0 controls inside strings itself; outside strings its only C0 character is the
# indentation's line break, which stays.
_JSON_UNSAFE = re.compile(f"[{_BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def shown(value: Any) -> str:
    """Untrusted text as one printable line: every UNSAFE character becomes a visible escape (\\x1b, \\n,
    \\u202e). A backslash is left as it is, so that showing twice shows the same (the log formatter and a
    caller may both apply it); a literal "\\x1b" in the data cannot do what ESC does either way."""
    text = value if isinstance(value, str) else str(value)
    return UNSAFE.sub(_escaped, text)


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def json_text(data: Any, **options: Any) -> str:
    """JSON with non-ASCII text readable (ensure_ascii=False) but no UNSAFE character raw.

    json.dumps escapes C0 controls only; DEL, C1, bidi controls, U+2028 and lone surrogates would go out
    raw. Outside strings JSON is ASCII, so they stand inside strings, where \\uXXXX is the same value:
    json.loads of the result gives back `data`.
    """
    return _JSON_UNSAFE.sub(_json_escaped, json.dumps(data, ensure_ascii=False, **options))
