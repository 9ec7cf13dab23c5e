"""The raw ceiling: prebuilt messages sent with plain `smtplib` on persistent connections, one per core.

No broker, no task, no rendering, no bookkeeping: one process per core, each with one connection opened
before the clock starts, calls `SMTP.sendmail` over its share of messages that were all built beforehand
(by the service's own builder, so sizes match what the service sends). The rate is all messages over the
time from the first process starting to the last one's last reply: what Python's smtplib can push into
this sink on this machine, the ceiling no Python sender can pass.
"""

from __future__ import annotations

import multiprocessing
import smtplib
import time
from typing import Any


def _sender(
    host: str, port: int, messages: list[tuple[str, list[str], bytes]], barrier: Any, out: Any
) -> None:
    smtp = smtplib.SMTP(host, port, local_hostname="localhost", timeout=60)
    smtp.ehlo()
    barrier.wait()
    started = time.monotonic()
    for envelope_from, recipients, data in messages:
        smtp.sendmail(envelope_from, recipients, data)
    ended = time.monotonic()
    smtp.quit()
    out.put((started, ended, len(messages)))


def run_ceiling(
    host: str, port: int, messages: list[tuple[str, list[str], bytes]], processes: int
) -> dict[str, Any]:
    """Send `messages` split over `processes` forked senders; the aggregate rate."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    out = context.Queue()
    shares = [messages[i::processes] for i in range(processes)]
    workers = [context.Process(target=_sender, args=(host, port, share, barrier, out)) for share in shares]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(30)
    started = min(r[0] for r in results)
    ended = max(r[1] for r in results)
    sent = sum(r[2] for r in results)
    return {
        "messages": sent,
        "processes": processes,
        "seconds": round(ended - started, 3),
        "rate": round(sent / (ended - started), 1),
        "per_process_rates": [round(r[2] / (r[1] - r[0]), 1) for r in results],
    }
