"""mail.bulk.start and mail.bulk.chunk: thin tasks over worker/bulk/chunks.py. Broker messages carry only ids.

`mail.bulk.start` fans a job out into one `mail.bulk.chunk` per chunk (the recipients stay in Redis).
A chunk task runs `run_chunk` and turns its result into "done" or the same task again after a countdown:
a retry after a transient failure, or "later" when the rate limit or the run's time budget says so.
A countdown may be as long as it needs: the worker holding the message renews its lease meanwhile
(worker/liveness/leases.py), so no other worker takes it early.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import Reject

from tasks import signals  # noqa: F401  (per-process setup of workers)
from tasks.runner import CELERY_RETRY_LIMIT
from worker.app import BULK, BULK_CHUNK_TASK, BULK_START_TASK, app
from worker.bulk.chunks import abandon_chunk, run_chunk
from worker.bulk.progress import FINISHED_STATES
from worker.delivery.deliver import DeliveryFailure
from worker.delivery.ratelimit import RateLimiter
from worker.runtime import runtime

# No early start for a group (the limiter's default tolerance lets a reservation go 20 ms early): a
# group is already a small burst, and the limit must hold over short windows too.
LIMITER_TOLERANCE = 0.0
# Chunk tasks enqueued between two saves of the fan-out position (a redelivered start resumes there).
FAN_OUT_STEP = 100

log = logging.getLogger(__name__)


@app.task(name=BULK_START_TASK, bind=True, acks_late=True)
def start_bulk(self: Any, job_id: str) -> dict[str, Any]:
    pending = runtime().pending
    try:
        jobs = runtime().bulk_jobs
        job = jobs.job(job_id)
        if job.state in FINISHED_STATES:
            pending.done(job_id)
            return {"job_id": job_id, "state": job.state, "enqueued": 0}
        first = jobs.fan_out_position(job_id)
        for step in range(first, job.chunks, FAN_OUT_STEP):
            chunks = range(step, min(step + FAN_OUT_STEP, job.chunks))
            for chunk in chunks:
                app.send_task(BULK_CHUNK_TASK, args=[job_id, chunk], queue=BULK)
            # Each chunk is covered by the pending ledger too: a chunk message the broker loses is
            # published again by the sweeper instead of staying pending until the job expires.
            pending.track_many([(f"{job_id}:{c}", BULK_CHUNK_TASK, [job_id, c], BULK, 0) for c in chunks])
            jobs.set_fan_out_position(job_id, chunks.stop)
        pending.done(job_id)
        return {"job_id": job_id, "state": job.state, "enqueued": job.chunks - first}
    except redis.RedisError as error:
        raise Reject(f"store unavailable: {error}", requeue=True) from None


@app.task(name=BULK_CHUNK_TASK, bind=True, acks_late=True)
def bulk_chunk(self: Any, job_id: str, chunk: int) -> dict[str, Any]:
    rt = runtime()
    entry = f"{job_id}:{chunk}"
    try:
        limiter = RateLimiter(rt.redis, rt.keys, tolerance=LIMITER_TOLERANCE)
        result = run_chunk(rt.services, rt.bulk_jobs, limiter, job_id, chunk, claims=rt.claims)
    except redis.RedisError as error:
        # The store is unreachable (Redis restarting): give the message back instead of losing it.
        raise Reject(f"store unavailable: {error}", requeue=True) from None
    except Exception as error:  # a bug, or input nothing foresaw: dead letters naming it, not a stuck chunk
        log.error(
            "bulk chunk %s failed with an unexpected error: dead-lettered (internal)", entry, exc_info=error
        )
        failure = DeliveryFailure("internal", f"{type(error).__name__}: {error}"[:1000])
        abandoned = abandon_chunk(rt.services, rt.bulk_jobs, job_id, chunk, failure)
        rt.pending.done(entry)
        return {
            "job_id": job_id,
            "chunk": chunk,
            "status": "done",
            "failed": abandoned,
            "error": failure.error,
        }
    if result.status in ("retry", "later", "busy"):
        rt.pending.touch(entry, busy_for=result.countdown)
        raise self.retry(countdown=result.countdown, max_retries=CELERY_RETRY_LIMIT)
    rt.pending.done(entry)
    return {"job_id": job_id, "chunk": chunk, **result.summary()}
