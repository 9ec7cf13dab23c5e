"""The bounce receiver (`mailworker bounces`): an SMTP or LMTP server (aiosmtpd) the MTA routes the realms'
bounce addresses to.

RCPT accepts only a realm's bounce address (its envelope sender, with or without a VERP token): the
receiver is no open relay and no sink for other mail. After DATA each message is recorded or kept
(worker/bounces/record.py) before the 250, so the MTA can forget it; when Redis cannot take it, 451 makes
the MTA try again later. Nothing in a message's content can crash the receiver: a failure to understand
one keeps it, with the error, for inspection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.bounces.record import BounceRecorder, Realms, bounce_addresses
from worker.bounces.verp import split_verp

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2526
REFRESH_S = 10.0  # how soon a realm's new bounce address is accepted
MAX_MESSAGE = 10 * 1024 * 1024  # a DSN returning a large original; bigger ones are refused at DATA


class AddressBook:
    """The realms' bounce addresses and From domains, read from the settings store every REFRESH_S."""

    def __init__(
        self, load: Callable[[], Mapping[str, Mapping[str, Any]]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.load = load  # realm -> its saved settings' fields (JSON names), no secret needed
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded_at = -REFRESH_S
        self._addresses: dict[str, list[str]] = {}
        self._domains: dict[str, str] = {}

    def realms_for(self, rcpt: str) -> Realms | None:
        """The realms whose bounce address `rcpt` is (a VERP token aside), or None."""
        with self._lock:
            if self.clock() - self._loaded_at >= REFRESH_S:
                fields = self.load()
                self._addresses = bounce_addresses(fields)
                self._domains = {
                    realm: str(f.get("from", "")).rpartition("@")[2].lower() for realm, f in fields.items()
                }
                self._loaded_at = self.clock()
            base, _ = split_verp(rcpt)
            names = self._addresses.get(base)
            return Realms(tuple(names), dict(self._domains)) if names else None


class BounceHandler:
    def __init__(self, book: AddressBook, recorder: BounceRecorder) -> None:
        self.book = book
        self.recorder = recorder

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:  # fmt: skip
        try:
            realms = await asyncio.to_thread(self.book.realms_for, address)
        except Exception:
            log.exception("bounce receiver: cannot read the realms' bounce addresses")
            return "451 4.3.0 cannot check the address now, try again later"
        if realms is None:
            return "550 5.1.1 not a bounce address of this service"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        replies = [await asyncio.to_thread(self._one, rcpt, data) for rcpt in envelope.rcpt_tos]
        # LMTP answers once per recipient; SMTP once (the first problem, if any, speaks for the message).
        if isinstance(server, LMTP):
            return "\r\n".join(replies)
        return next(
            (reply for reply in replies if not reply.startswith("250")), replies[0] if replies else "250 OK"
        )

    def _one(self, rcpt: str, data: bytes) -> str:
        realms = self.book.realms_for(rcpt) or Realms((), {})
        try:
            outcome = self.recorder.handle(realms, rcpt, data)
        except Exception as error:  # a bug or an input nothing foresaw: keep the message, with the error
            log.exception("bounce receiver: could not record a message for %s", rcpt)
            try:
                self.recorder.keep(
                    realms, rcpt, data, f"error while recording: {type(error).__name__}: {error}"
                )
            except Exception:
                return "451 4.3.0 cannot store the message now, try again later"
            return "250 2.0.0 kept for inspection"
        return f"250 2.0.0 {outcome}"


class _LmtpController(Controller):
    def factory(self) -> SMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


def start(
    handler: BounceHandler, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, lmtp: bool = False
) -> Controller:
    """The receiver running in a thread of its own; `.stop()` ends it."""
    kind = _LmtpController if lmtp else Controller
    controller = kind(handler, hostname=host, port=port, data_size_limit=MAX_MESSAGE, ready_timeout=10.0)
    controller.start()
    return controller
