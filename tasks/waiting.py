"""Waiting on a worker without waiting in silence: fail at once when no live worker serves the queue."""

from __future__ import annotations

import time
from typing import Any

import celery.exceptions
from celery.result import AsyncResult

from config.errors import WorkerUnavailable
from tasks.outcomes import ended_value
from worker.liveness.heartbeat import no_worker_message
from worker.runtime import runtime

# How often a waiter looks again at who serves its queue (a worker may die while we wait).
POLL_S = 1.0


def require_worker(queue: str, then: str = "") -> None:
    """Raise WorkerUnavailable unless a live worker (heartbeat within one lease) consumes `queue`."""
    live, lapsed = runtime().live_workers.all()
    if not any(queue in worker.queues for worker in live):
        raise WorkerUnavailable(no_worker_message(queue, lapsed, then=then))


def wait_result(result: AsyncResult, timeout: float, queue: str) -> Any:
    """The task's return value (a dead letter's result dict too: tasks/outcomes.py); WorkerUnavailable as soon as nobody serves `queue`, TimeoutError after
    `timeout` seconds. A result that is there already is returned even when no worker runs."""
    deadline = time.monotonic() + timeout
    while True:
        if result.ready():
            return ended_value(result.get(propagate=False))
        require_worker(queue, then="; the job stays queued and runs once a worker is back")
        left = deadline - time.monotonic()
        if left <= 0:
            raise celery.exceptions.TimeoutError(f"no result for {result.id} within {timeout:g}s")
        try:
            return ended_value(result.get(timeout=min(left, POLL_S), propagate=False))
        except celery.exceptions.TimeoutError:
            continue
