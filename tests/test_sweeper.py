"""Jobs the broker lost are published again; jobs that ended or are being worked on are left alone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from config.keys import Keys
from worker.jobs.pending import PendingJobs


@pytest.fixture
def pending(fake_redis: Any) -> PendingJobs:
    return PendingJobs(fake_redis, Keys("t"), grace=60, keep=3600)


def sweep(
    pending: PendingJobs, *, after: float, ended: frozenset[str] = frozenset()
) -> list[tuple[str, str | None]]:
    published: list[tuple[str, str | None]] = []
    pending.sweep(lambda task, args, task_id, queue, lane: published.append((task, task_id)),
                  lambda job_id: job_id in ended, now=time.time() + after)  # fmt: skip
    return published


def test_a_job_without_news_is_published_again_under_its_own_id(pending: PendingJobs) -> None:
    pending.track("j1", "mail.send", [{"id": "j1"}], "transactional")
    assert sweep(pending, after=30) == []  # within its grace
    assert sweep(pending, after=61) == [("mail.send", "j1")]
    assert sweep(pending, after=61) == []  # published again once per grace, not in a loop


def test_a_republished_job_keeps_its_priority_lane(pending: PendingJobs) -> None:
    pending.track("j1", "mail.send", [], "transactional", lane=0)
    lanes: list[int] = []
    pending.sweep(lambda task, args, task_id, queue, lane: lanes.append(lane), lambda job_id: False,
                  now=time.time() + 61)  # fmt: skip
    assert lanes == [0]


def test_lost_bulk_chunks_are_published_again_with_a_task_id_of_their_own(pending: PendingJobs) -> None:
    pending.track_many([(f"bulk-1:{n}", "mail.bulk.chunk", ["bulk-1", n], "bulk", 0) for n in range(3)])
    assert sweep(pending, after=61, ended=frozenset({"bulk-1:1"})) == [
        ("mail.bulk.chunk", None),
        ("mail.bulk.chunk", None),
    ]


def test_news_pushes_the_deadline_and_the_end_forgets_the_job(pending: PendingJobs) -> None:
    pending.track("j1", "mail.send", [], "transactional")
    pending.touch("j1", busy_for=300)  # a retry in 5 minutes
    assert sweep(pending, after=200) == []
    pending.done("j1")
    assert sweep(pending, after=10_000) == []
    pending.touch("j1", busy_for=0)  # a late touch does not bring an ended job back
    assert sweep(pending, after=10_000) == []


def test_a_job_that_ended_elsewhere_is_forgotten_not_published(pending: PendingJobs, fake_redis: Any) -> None:
    pending.track("j1", "mail.send", [], "transactional")
    assert sweep(pending, after=61, ended=frozenset({"j1"})) == []
    assert fake_redis.zcard(Keys("t").pending()) == 0 and fake_redis.get(Keys("t").pending_job("j1")) is None


@pytest.mark.integration
def test_a_job_the_broker_lost_is_delivered_by_the_sweep(
    celery_worker: Any, realm: str, smtp_server: Any
) -> None:
    from tasks import api
    from worker.app import app
    from worker.jobs.model import new_job
    from worker.runtime import runtime

    runtime().store.save(realm, smtp_server.settings_dict())
    job = new_job(realm, "email-verification", "lost@example.com",
                  context={"user": {"username": "u"}, "link": "https://x.example/v"})  # fmt: skip
    # Recorded by the producer, but the broker message never arrives (the loss the sweeper exists for).
    runtime().pending.track(job.id, "mail.send", [job.model_dump(mode="json")], "transactional")

    def publish(task: str, args: list[Any], task_id: str | None, queue: str, lane: int) -> None:
        app.send_task(task, args=args, task_id=task_id, queue=queue, priority=lane)

    def ended(entry_id: str) -> bool:
        # Only this test's job counts: other tests' records (a bulk chunk recorded after it ended) are
        # the sweeper's to forget, not to publish here.
        return entry_id != job.id or runtime().ledger.state(entry_id) is not None

    later = time.time() + runtime().settings.lost_job_grace + 1
    assert runtime().pending.sweep(publish, ended, now=later) == [job.id]
    assert api.wait_for_result(job.id)["status"] == "sent"
    assert len(smtp_server.received_for("lost@example.com")) == 1
    # Ended: forgotten. (Other tests' records may still be there: a bulk job cancelled while its start task
    # fans out keeps recording chunks for a moment; they end as cancelled on their own.)
    assert job.id not in runtime().pending.overdue(now=later + 10**6)
