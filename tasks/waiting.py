"""Waiting on a worker without waiting in silence: fail at once when no live worker serves the queue."""

from __future__ import annotations

import time
from typing import Any

import celery.exceptions
from celery.result import AsyncResult

from config.errors import WorkerUnavailable
from config.names import TRANSACTIONAL
from tasks.outcomes import ended_value
from worker.liveness.heartbeat import no_worker_message
from worker.runtime import runtime

# How often a waiter looks again at who serves its queue (a worker may die while we wait).
POLL_S = 1.0
# How often a waiter for a transactional job reads its result (one GET; such results are not published).
READ_EVERY_S = 0.05


def require_worker(queue: str, then: str = "") -> None:
    """Raise WorkerUnavailable unless a live worker (heartbeat within one lease) consumes `queue`."""
    live, lapsed = runtime().live_workers.all()
    if not any(queue in worker.queues for worker in live):
        raise WorkerUnavailable(no_worker_message(queue, lapsed, then=then))


def wait_result(result: AsyncResult, timeout: float, queue: str) -> Any:
    """The task's return value (a dead letter's result dict too: tasks/outcomes.py); WorkerUnavailable as soon as nobody serves `queue`, TimeoutError after
    `timeout` seconds. A result that is there already is returned even when no worker runs."""
    deadline = time.monotonic() + timeout
    asked = 0.0  # when a live worker was last looked for
    while True:
        if result.ready():
            return ended_value(result.get(propagate=False))
        if time.monotonic() - asked >= POLL_S:
            require_worker(queue, then="; the job stays queued and runs once a worker is back")
            asked = time.monotonic()
        left = deadline - time.monotonic()
        if left <= 0:
            raise celery.exceptions.TimeoutError(f"no result for {result.id} within {timeout:g}s")
        if queue == TRANSACTIONAL:
            # A transactional job's result is stored, not published (worker/broker/results.py): read it.
            time.sleep(min(left, READ_EVERY_S))
            continue
        try:
            return ended_value(result.get(timeout=min(left, POLL_S), propagate=False))
        except celery.exceptions.TimeoutError:
            continue
