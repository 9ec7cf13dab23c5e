"""mail.bulk.start and mail.bulk.chunk: thin tasks over worker/bulk.py. Broker messages carry only ids.

`mail.bulk.start` fans a job out into one `mail.bulk.chunk` per chunk (the recipients stay in Redis).
A chunk task runs `run_chunk` and turns its result into "done" or the same task again after a countdown:
a retry after a transient failure, or "later" when the rate limit or the run's time budget says so.
Every countdown stays below the broker's visibility timeout (worker/bulk.py caps them).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import redis
from celery.exceptions import Reject

from tasks import signals  # noqa: F401  (per-process setup of workers)
from tasks.runner import CELERY_RETRY_LIMIT
from worker.app import BULK, app
from worker.bulk import TASK_NAME, run_chunk
from worker.progress import FINISHED_STATES, bulk_jobs
from worker.ratelimit import RateLimiter
from worker.runtime import runtime

# No early start for a group (the limiter's default tolerance lets a reservation go 20 ms early): a
# group is already a small burst, and the limit must hold over short windows too.
LIMITER_TOLERANCE = 0.0
# Chunk tasks enqueued between two saves of the fan-out position (a redelivered start resumes there).
FAN_OUT_STEP = 100


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@app.task(name="mail.bulk.start", bind=True, acks_late=True)
def start_bulk(self: Any, job_id: str) -> dict[str, Any]:
    try:
        jobs = bulk_jobs()
        job = jobs.job(job_id)
        if job.state in FINISHED_STATES:
            return {"job_id": job_id, "state": job.state, "enqueued": 0}
        first = jobs.fan_out_position(job_id)
        for chunk in range(first, job.chunks):
            app.send_task(TASK_NAME, args=[job_id, chunk], queue=BULK)
            if (chunk + 1) % FAN_OUT_STEP == 0:
                jobs.set_fan_out_position(job_id, chunk + 1)
        jobs.set_fan_out_position(job_id, job.chunks)
        return {"job_id": job_id, "state": job.state, "enqueued": job.chunks - first}
    except redis.RedisError as error:
        raise Reject(f"store unavailable: {error}", requeue=True) from None


@app.task(name=TASK_NAME, bind=True, acks_late=True)
def bulk_chunk(self: Any, job_id: str, chunk: int) -> dict[str, Any]:
    rt = runtime()
    try:
        result = run_chunk(
            rt.services,
            bulk_jobs(),
            RateLimiter(rt.redis, rt.keys, tolerance=LIMITER_TOLERANCE),
            job_id,
            chunk,
            owner=_owner(),
        )
    except redis.RedisError as error:
        # The store is unreachable (Redis restarting): give the message back instead of losing it.
        raise Reject(f"store unavailable: {error}", requeue=True) from None
    if result.status in ("retry", "later", "busy"):
        raise self.retry(countdown=result.countdown, max_retries=CELERY_RETRY_LIMIT)
    return {"job_id": job_id, "chunk": chunk, **result.summary()}
