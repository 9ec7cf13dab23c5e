"""What travels on the wire for one message: the result of a transaction, the DATA payload, refusals."""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.smtp.failures import SmtpFailure


@dataclass
class SendResult:
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]
    code: int
    reply: str


_LINE_START_DOT = re.compile(rb"(?m)^\.")


def dot_stuffed(data: bytes) -> bytes:
    """The DATA payload by smtplib's rules (SMTP.data): a dot opening a line (after CRLF or a bare LF, which
    some servers take for a line end) doubled, a last CRLF ensured, then the end mark CRLF.CRLF."""
    data = _LINE_START_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def all_refused_failure(refused: dict[str, tuple[int, str]]) -> SmtpFailure:
    # A temporary refusal wins: retrying makes sense for that recipient.
    rcpt, (code, text) = next(
        ((r, reply) for r, reply in refused.items() if 400 <= reply[0] < 500), next(iter(refused.items()))
    )
    if len(refused) > 1:
        text = "all recipients refused: " + "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
    else:
        text = f"{rcpt}: {text}"
    return SmtpFailure(code, text, "rcpt", recipient=rcpt if len(refused) == 1 else None)
