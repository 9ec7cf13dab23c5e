"""Feedback-loop complaints parsed (RFC 5965 ARF): a pure function from the report's bytes.

A complaint is a `multipart/report; report-type=feedback-report` whose `message/feedback-report` part says
what the user did (Feedback-Type: abuse, fraud, ...) and often whom it was sent to (Original-Rcpt-To); the
third part returns the original or its headers, whose Message-ID and To identify the mail when the
report's own fields do not.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import Message

from worker.bounces.dsn import header_address, original_headers, parse_message, text_of


@dataclass(frozen=True)
class Complaint:
    feedback_type: str  # abuse, fraud, virus, other, ...
    recipient: str | None  # the complaining user's address
    message_id: str | None  # of the original
    user_agent: str | None


def _fields(part: Message) -> Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = payload if isinstance(payload, str) else ""
    return email.message_from_string(text, policy=email.policy.compat32)


def parse_arf(data: bytes) -> Complaint | None:
    """The complaint in `data`, or None when it is no feedback report."""
    message = parse_message(data)
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields = _fields(part)
        original = original_headers(message)
        recipient = text_of(fields.get("Original-Rcpt-To"))
        if recipient is None and original is not None:
            recipient = header_address(original, "To")
        message_id = text_of(original.get("Message-ID")) if original is not None else None
        return Complaint(
            feedback_type=(text_of(fields.get("Feedback-Type")) or "other").lower(),
            recipient=recipient.strip("<>") if recipient else None,
            message_id=message_id,
            user_agent=text_of(fields.get("User-Agent")),
        )
    return None
