"""`status` says STARTED from the job's claim: no STARTED result is written (worker/app.py, Redis cost)."""

import uuid

from tasks.status import job_status
from worker.runtime import runtime


def test_a_job_a_worker_holds_is_started_without_a_started_result() -> None:
    rt = runtime()
    job_id = f"started-{uuid.uuid4().hex}"
    assert job_status(job_id)["state"] == "PENDING"
    rt.redis.set(rt.keys.claim(job_id), "some-process|1", ex=60)
    try:
        assert job_status(job_id)["state"] == "STARTED"
    finally:
        rt.redis.delete(rt.keys.claim(job_id))
    assert job_status(job_id)["state"] == "PENDING"  # released: queued again, or gone
