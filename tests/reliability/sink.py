"""A counting SMTP sink on loopback (aiosmtpd) for the fault scenarios: cheap enough for 100,000 messages.

Unlike tests/support/smtp_server.py it does not parse or keep messages: it counts, per envelope recipient,
the messages it ACCEPTED, and the Message-IDs. Accepted means the server took the message: the end of DATA
arrived and was neither refused nor dropped by a fault, whether or not the client then got the 250. It can:

- flap: answer a share of the commands (and of the ends of DATA) with 421 (then close), 451, or drop the
  connection without a word; a message whose DATA was refused or dropped that way is not accepted;
- lose replies (`lose_reply`, a share 0..1 of the messages): the message is accepted, then the connection
  is dropped before the 250, so the client cannot know it arrived (counter "lost reply");
- answer the end of DATA late: `data_reply_delay` seconds for a share `slow_share` of the messages (all by
  default; counter "slow reply"), and `per_message_delay` seconds for every message, the time a slow
  server spends on each (scanning, queueing). The two add up. The message counts as accepted before the
  wait, so a client that gives up meanwhile leaves it accepted, as a real server would. Waits are the
  event loop's (other connections go on) and the idle timeout grows to cover them;
- go down and come back on the same port (`stop()` then `start()`): connections are refused meanwhile;
- reject recipients with a 5xx (`reject`).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import Counter
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

LOCALHOST = "127.0.0.1"
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.MULTILINE | re.IGNORECASE)
FLAP_VERBS = ("EHLO", "NOOP", "RSET", "MAIL", "RCPT", "DATA")


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        if time.monotonic() < self.sink.tempfail_until:  # an outage of the provider: 451 to everyone
            self.sink._count("tempfail")
            return "451 4.3.0 temporarily unavailable, try again later"
        reply = self.sink.rejected.get(address.lower())
        if reply:
            self.sink._count("rejected")
            return reply
        return MISSING

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.sink._fault()
        if fault == "drop":
            assert isinstance(server, _FlakySMTP)
            server._close()  # the client never learns whether the message was taken: it was not
            return "451 4.3.0 dropped"
        if fault:
            return fault
        raw = envelope.original_content or b""
        found = _MESSAGE_ID.search(raw)
        self.sink._accepted(list(envelope.rcpt_tos), found.group(1).decode() if found else "", raw)
        if self.sink.slow:
            delay = self.sink._reply_delay()
            if delay:
                await asyncio.sleep(delay)
        if self.sink.lose_reply and self.sink._lose():
            assert isinstance(server, _FlakySMTP)
            server._close()  # taken, but the client never learns it: the 250 below goes nowhere
        return "250 2.0.0 OK"


class _FlakySMTP(SMTP):
    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink
        self._smtp_methods = {name: self._wrap(name, method) for name, method in self._smtp_methods.items()}

    def _wrap(self, name: str, method: Any) -> Any:
        async def maybe_flap(arg: str | None) -> None:
            fault = self.sink._fault() if name in FLAP_VERBS else None
            if fault == "drop":
                self._close()
                return
            if fault:
                await self.push(fault)
                if fault.startswith("421"):
                    self._close()
                return
            await method(arg)

        return maybe_flap

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        self.sink._count("connections")
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, sink: Sink, port: int) -> None:
        self.sink = sink
        self.wanted_port = port
        # aiosmtpd's idle timeout also runs while a reply is held back: it must outlast the longest wait.
        idle = max(60, int(sink.data_reply_delay + sink.per_message_delay) + 60)
        super().__init__(_Handler(sink), hostname=LOCALHOST, port=port, server_hostname="sink.test.local",
                         decode_data=False, ready_timeout=10.0, timeout=idle)  # fmt: skip

    def factory(self) -> SMTP:
        return _FlakySMTP(self.sink, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=LOCALHOST, port=self.wanted_port, reuse_address=True, backlog=256
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()

    def _trigger_server(self) -> None:
        # aiosmtpd greets itself once to check the server is up; that connection is not the test's.
        super()._trigger_server()
        self.sink._count("connections", -1)


class Sink:
    """Counts what it accepted; see the module docstring."""

    def __init__(
        self,
        *,
        flap: float = 0.0,
        seed: int = 1,
        keep: bool = False,
        lose_reply: float = 0.0,
        data_reply_delay: float = 0.0,
        slow_share: float = 1.0,
        per_message_delay: float = 0.0,
    ) -> None:
        for name, share in (("flap", flap), ("lose_reply", lose_reply), ("slow_share", slow_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} is a share of the messages, from 0 to 1")
        if data_reply_delay < 0 or per_message_delay < 0:
            raise ValueError("data_reply_delay and per_message_delay are seconds, 0 or more")
        self.flap = flap
        self.lose_reply = lose_reply
        self.data_reply_delay = data_reply_delay
        self.slow_share = slow_share
        self.per_message_delay = per_message_delay
        self.slow = bool(data_reply_delay or per_message_delay)
        self.random = random.Random(seed)
        self.keep = keep  # keep the raw messages (a few hundred at most)
        self.port = 0
        self.accepted: Counter[str] = Counter()  # recipient -> messages accepted for it
        self.message_ids: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()  # connections, accepted, rejected, faults by kind
        self.raw: list[bytes] = []
        self.rejected: dict[str, str] = {}
        self.tempfail_until = 0.0  # time.monotonic() until which every RCPT gets 451 (counter "tempfail")
        self.first_accept_at: float | None = None
        self._lock = threading.Lock()
        self._controller: _Controller | None = None

    def start(self) -> Sink:
        """Listen (again) on the same port as before, or a free one the first time."""
        self._controller = _Controller(self, self.port)
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings_dict(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"from": "noreply@example.com", "host": LOCALHOST, "port": self.port,
                                "connect_timeout": 5, "timeout": 5}  # fmt: skip
        data.update(overrides)
        return data

    def reject(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        self.rejected[address.lower()] = reply

    # -- figures --

    def total(self) -> int:
        with self._lock:
            return self.counters["accepted"]

    def duplicates(self) -> int:
        """Messages accepted more than once for the same recipient (each job has its own recipient)."""
        with self._lock:
            return sum(n - 1 for n in self.accepted.values() if n > 1)

    def wait_total(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.total() >= count:
                return True
            time.sleep(0.2)
        return self.total() >= count

    # -- server thread --

    def _fault(self) -> str | None:
        if not self.flap:
            return None
        with self._lock:
            if self.random.random() >= self.flap:
                return None
            fault = self.random.choice(
                ("421 4.3.2 flapping, closing", "451 4.3.0 flapping, try again", "drop")
            )
            self.counters[f"fault {fault[:3] if fault != 'drop' else 'drop'}"] += 1
            return fault

    def _lose(self) -> bool:
        with self._lock:
            if self.random.random() >= self.lose_reply:
                return False
            self.counters["lost reply"] += 1
            return True

    def _reply_delay(self) -> float:
        delay = self.per_message_delay
        if self.data_reply_delay:
            with self._lock:
                # No draw when every message is slow: the flap and lose_reply sequences stay as they were.
                if self.slow_share >= 1 or self.random.random() < self.slow_share:
                    self.counters["slow reply"] += 1
                    delay += self.data_reply_delay
        return delay

    def _accepted(self, recipients: list[str], message_id: str, raw: bytes) -> None:
        with self._lock:
            self.counters["accepted"] += 1
            self.accepted.update(r.lower() for r in recipients)
            self.message_ids[message_id] += 1
            if self.keep:
                self.raw.append(raw)
            if self.first_accept_at is None:
                self.first_accept_at = time.time()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n
