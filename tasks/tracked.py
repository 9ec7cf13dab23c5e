"""The base of the tasks whose jobs the pending ledger tracks (mail.send, mail.event)."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from celery import Task

from worker.runtime import runtime


class TrackedJob(Task):
    """A task whose jobs the pending ledger tracks (mail.send, mail.event).

    The ledger forgets a job after Celery stored its end (SUCCESS, or FAILURE for a dead letter), not
    before: a worker killed in between leaves the entry, the lost-message check (worker/jobs/lost.py)
    publishes the job again, and the copy finds it ended and writes the result. In the other order the
    job would end with no result and nothing left to write one.
    """

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Redis blinking here leaves the entry: the lost-message check or the sweep finds the job ended.
        with contextlib.suppress(redis.RedisError):
            runtime().pending.done(task_id)
