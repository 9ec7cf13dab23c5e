"""What runs alongside a measured phase, each in a thread of the bench process until stopped.

- `TransactionalLoad`: a password reset every 1/rate seconds to a unique recipient; its latency is
  arrival at the latency sink minus enqueue time (and, as a second measure, the result's sent_at).
- `ConnectionTests`: Test Connection on a realm back to back, timed as a caller sees it.
- `MemorySampler`: the worker process tree's memory once a second, keeping the peak.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.figures import connection_summary, latency_summary
from bench.harness import Memory
from bench.workload import CONTEXT, TX_REALM, TX_TEMPLATE, slug

if TYPE_CHECKING:
    from bench.harness import Workers
    from bench.sink import AioSink


class TransactionalLoad(threading.Thread):
    """Enqueues one transactional e-mail every 1/rate seconds to a unique recipient until stopped."""

    def __init__(self, rate: float, tag: str) -> None:
        super().__init__(daemon=True, name=f"tx-{tag}")
        self.rate = rate
        self.tag = tag
        self.stop_event = threading.Event()
        self.sent: list[tuple[str, float, str]] = []  # (recipient, time.time() before enqueue, job id)
        self.errors: list[str] = []

    def run(self) -> None:
        from tasks import api

        interval = 1 / self.rate
        next_at = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            to = f"tx-{slug(self.tag)}-{i}-{uuid.uuid4().hex[:6]}@example.com"
            context = {**CONTEXT, "link_expiration": 5}
            enqueued_at = time.time()
            try:
                job_id = api.send_email(TX_REALM, TX_TEMPLATE, to, context=context)
                self.sent.append((to, enqueued_at, job_id))
            except Exception as error:  # reported, not fatal
                self.errors.append(f"{type(error).__name__}: {error}")
            i += 1
            next_at += interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)

    def results(self, latency_sink: AioSink, timeout: float = 60) -> dict[str, Any]:
        """Latency per message: sink arrival - enqueue (primary) and result's sent_at - enqueue."""
        from tasks import api

        deadline = time.monotonic() + timeout
        result_ms: list[float] = []
        statuses: dict[str, int] = {}
        for _to, enqueued_at, job_id in self.sent:
            try:
                value = api.wait_for_result(job_id, timeout=max(0.5, deadline - time.monotonic()))
            except Exception as error:
                statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
                continue
            statuses[value.get("status", "?")] = statuses.get(value.get("status", "?"), 0) + 1
            if value.get("sent_at"):
                result_ms.append((value["sent_at"] - enqueued_at) * 1000)
        arrivals = latency_sink.arrivals()
        sink_ms = [(arrivals[to] - enqueued_at) * 1000 for to, enqueued_at, _ in self.sent if to in arrivals]
        return latency_summary(
            sink_ms, result_ms, enqueued=len(self.sent), statuses=statuses, errors=self.errors[:5]
        )


class ConnectionTests(threading.Thread):
    """Runs Test Connection (tasks.connection.test_connection) on a realm back to back, with a pause."""

    def __init__(self, realm: str, pause: float = 0.25, first_after: float = 0.1) -> None:
        super().__init__(daemon=True, name="test-connection")
        self.realm = realm
        self.pause = pause
        self.first_after = first_after
        self.stop_event = threading.Event()
        self.rounds: list[tuple[float, bool, str | None]] = []  # (seconds, ok, error)

    def run(self) -> None:
        from tasks.connection import test_connection

        if self.stop_event.wait(self.first_after):
            return
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                status = test_connection(self.realm, use_draft=False, timeout=30)
                ok, error = bool(status.get("ok")), status.get("error")
            except Exception as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            self.rounds.append((time.monotonic() - started, ok, error))
            self.stop_event.wait(self.pause)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(35)

    def summary(self) -> dict[str, Any]:
        return connection_summary(
            [s for s, _, _ in self.rounds],
            sum(1 for _, ok, _ in self.rounds if ok),
            [e or "?" for _, ok, e in self.rounds if not ok],
        )


class MemorySampler(threading.Thread):
    """The workers' memory once a second; keeps the peak."""

    def __init__(self, workers: Workers) -> None:
        super().__init__(daemon=True, name="memory")
        self.workers = workers
        self.peak = Memory(0, 0, 0)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            memory = self.workers.memory()
            if memory.rss_kib > self.peak.rss_kib:
                self.peak = memory

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
