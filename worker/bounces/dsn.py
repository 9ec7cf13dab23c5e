"""Delivery status notifications parsed: pure functions from the bytes an MTA sent back to what they say.

RFC 3464 first: a `multipart/report; report-type=delivery-status` whose `message/delivery-status` part
holds one block per recipient (Action, Status, Diagnostic-Code, Final-Recipient). Hard or soft comes from
the status class: 5.x.x is permanent (hard), 4.x.x transient (soft); without a status, Action decides
(`failed` hard, `delayed` soft). `delivered`, `relayed` and `expanded` are no bounce and are left out.
Other formats (old Exim, qmail, Exchange, ...) go to `flufl.bounce`'s detectors, which give addresses and
permanent/temporary but no status code.

The returned original (`message/rfc822` or `text/rfc822-headers`, the third part) gives the Message-ID
the record falls back on when the bounce address carries no VERP token.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import parseaddr

# flufl.bounce logs every detector it runs (INFO) and, with a traceback, each one that trips over a hostile
# message (ERROR) before raising: the raise is handled here, the log lines would only flood ours.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

HARD, SOFT = "hard", "soft"
BOUNCE_ACTIONS = {"failed": HARD, "delayed": SOFT}
NOT_BOUNCES = ("delivered", "relayed", "expanded")
_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
MAX_TEXT = 1000  # a diagnostic is for people; an MTA's essay is cut


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str  # the final (else original) recipient, an address
    kind: str  # hard | soft
    action: str
    status: str | None  # 5.1.1
    diagnostic: str | None  # "smtp; 550 5.1.1 <bob@example.net>: user unknown"
    smtp_code: int | None  # 550, from the diagnostic


@dataclass(frozen=True)
class Report:
    recipients: tuple[RecipientStatus, ...]
    message_id: str | None  # of the returned original
    original_to: str | None
    standard: bool  # RFC 3464; False: a flufl.bounce detector's finding


def parse_message(data: bytes) -> Message:
    """The message as the stdlib reads it (compat32 never raises on malformed headers)."""
    return email.message_from_bytes(data, policy=email.policy.compat32)


def kind_of(action: str, status: str | None) -> str | None:
    """hard, soft or None (not a bounce) for one recipient's Action and Status."""
    action = action.strip().lower()
    if action in NOT_BOUNCES:
        return None
    match = _STATUS.match(status or "")
    if match is not None and match.group(1) in "45":
        return HARD if match.group(1) == "5" else SOFT
    return BOUNCE_ACTIONS.get(action)


def _address(value: str | None) -> str | None:
    """`rfc822; bob@example.net` -> bob@example.net."""
    if not value:
        return None
    _, _, address = value.rpartition(";")
    address = address.strip().strip("<>").strip()
    return address if "@" in address else None


def header_address(message: Message, name: str) -> str | None:
    """The address in a header such as `To: Bob <bob@example.net>`."""
    _, address = parseaddr(str(message.get(name, "")))
    return address if "@" in address else None


def text_of(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:MAX_TEXT] or None


def _smtp_code(diagnostic: str | None) -> int | None:
    match = re.search(r"\b([245]\d\d)\b", diagnostic or "")
    return int(match.group(1)) if match else None


def _blocks(part: Message) -> list[Message]:
    """The per-message and per-recipient field blocks of a message/delivery-status part."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the stdlib parses the blocks as sub-messages
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    return [
        email.message_from_string(chunk)
        for chunk in re.split(r"\r?\n\s*\r?\n", text.strip())
        if chunk.strip()
    ]


def original_headers(message: Message) -> Message | None:
    """The returned original's headers (message/rfc822 or text/rfc822-headers), if the report has them."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return email.message_from_bytes(raw, policy=email.policy.compat32)
    return None


def _rfc3464(message: Message) -> list[RecipientStatus] | None:
    """The recipients of an RFC 3464 report, or None when the message is not one."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        found = []
        for block in _blocks(part)[1:]:  # the first block is about the message, the rest one per recipient
            recipient = _address(block.get("Final-Recipient")) or _address(block.get("Original-Recipient"))
            kind = kind_of(str(block.get("Action", "")), block.get("Status"))
            if recipient is None or kind is None:
                continue
            diagnostic = text_of(block.get("Diagnostic-Code"))
            status = _STATUS.match(str(block.get("Status", "")).strip())
            found.append(RecipientStatus(recipient, kind, str(block.get("Action", "")).strip().lower(),
                                         status.group(0) if status else None, diagnostic,
                                         _smtp_code(diagnostic)))  # fmt: skip
        return found
    return None


def _non_standard(message: Message) -> list[RecipientStatus]:
    try:
        from flufl.bounce import all_failures
    except ImportError:  # an optional reader: without it only RFC 3464 reports are understood
        return []
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over hostile input must not take the receiver down
        return []
    found = []
    for kind, addresses in ((HARD, permanent), (SOFT, temporary - permanent)):
        for raw in sorted(addresses):
            address = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if "@" in address:
                found.append(RecipientStatus(address.strip("<> "), kind, "failed" if kind == HARD else "delayed",
                                             None, None, None))  # fmt: skip
    return found


def parse_dsn(data: bytes) -> Report | None:
    """The bounce report in `data`, or None when it is none (no recipient bounced)."""
    message = parse_message(data)
    standard = _rfc3464(message)
    recipients = standard if standard is not None else _non_standard(message)
    if not recipients:
        return None
    original = original_headers(message)
    message_id = text_of(original.get("Message-ID")) if original is not None else None
    original_to = header_address(original, "To") if original is not None else None
    return Report(tuple(recipients), message_id, original_to, standard is not None)
