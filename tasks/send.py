"""mail.send: deliver one transactional e-mail job."""

from __future__ import annotations

from typing import Any

from tasks import signals  # noqa: F401  (per-process setup of workers)
from tasks.outcomes import DeadLettered
from tasks.runner import run_job
from tasks.tracked import TrackedJob
from worker.app import SEND_TASK, app
from worker.jobs.model import EmailJob


@app.task(name=SEND_TASK, base=TrackedJob, bind=True, acks_late=True, throws=(DeadLettered,))
def send_email(self: Any, job: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, EmailJob.model_validate(job))
