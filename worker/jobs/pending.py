"""Jobs the broker lost, found and sent again.

Celery's Redis transport has windows where a message vanishes: a worker pops it (BRPOP) and Redis goes
away before the worker recorded it as unacknowledged, or an AOF that syncs every second loses the last
writes of a crash. The producer therefore records every transactional job it enqueues in a ledger of
its own right after publishing (a sorted set scored by "news expected by"); workers push the score
forward on every attempt that could outlast it and remove the job when it ends (sent, dead-lettered,
dropped, skipped). A job whose time passed without
news is published again under the same id: if it was only slow, the copy is skipped by its
delivered-marker or its claim, so sending it again can cost a duplicate message at worst, never a lost one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from config.keys import Keys
from config.names import EVENT_TASK, SEND_TASK

log = logging.getLogger(__name__)

# Clocks of the hosts that publish and of those that run jobs may differ by this much.
CLOCK_SLACK_S = 60.0

Publish = Callable[[str, list[Any], str | None, str, int], None]  # (task name, args, task id, queue, lane)


class PendingJobs:
    def __init__(self, client: redis.Redis, keys: Keys, grace: float, keep: int) -> None:
        self.redis = client
        self.keys = keys
        self.grace = grace  # how long a job may go without news before it counts as lost
        self.keep = keep  # seconds a job's payload is kept (its longest possible life)

    def track(self, job_id: str, task: str, args: list[Any], queue: str, lane: int = 0) -> None:
        """Right after publishing: the job and what it takes to publish it again (its lane too)."""
        payload = json.dumps({"task": task, "args": args, "queue": queue, "lane": lane})
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.pending_job(job_id), payload, ex=self.keep)
        pipe.zadd(self.keys.pending(), {job_id: time.time() + self.grace})
        pipe.execute()

    def track_many(self, entries: list[tuple[str, str, list[Any], str, int]]) -> None:
        """A bulk job's chunks at once, (id, task, args, queue, lane) each, in one round trip."""
        if not entries:
            return
        due = time.time() + self.grace
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, task, args, queue, lane in entries:
            payload = json.dumps(
                {"task": task, "args": args, "queue": queue, "lane": lane, "same_task_id": False}
            )
            pipe.set(self.keys.pending_job(entry_id), payload, ex=self.keep)
        pipe.zadd(self.keys.pending(), {entry[0]: due for entry in entries})
        pipe.execute()

    def entry(self, job_id: str) -> dict[str, Any] | None:
        """What was recorded to publish the job again (task, args, queue, lane), while it has not ended."""
        raw = self.redis.get(self.keys.pending_job(job_id))
        try:
            entry = json.loads(str(raw)) if raw is not None else None
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def touch(self, job_id: str, busy_for: float = 0.0) -> None:
        """A worker works on the job (or will retry it after `busy_for` seconds): news expected later."""
        self.redis.zadd(self.keys.pending(), {job_id: time.time() + busy_for + self.grace}, xx=True)

    def touch_for_attempt(self, job_id: str, created_at: float, busy_for: float) -> None:
        """`touch` as an attempt starts, left out while the job's score already covers the attempt.

        Every write of the score is its own time + grace or later (track, touch, the sweeper), so it is
        never earlier than `created_at` + grace: an attempt that ends before that, with CLOCK_SLACK_S for
        the producer's clock against this host's, needs no ZADD (one Redis command a job, nearly always).
        """
        if time.time() + busy_for + CLOCK_SLACK_S < created_at + self.grace:
            return
        self.touch(job_id, busy_for)

    def done(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.pending(), job_id)
        pipe.delete(self.keys.pending_job(job_id))
        pipe.execute()

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        return [
            str(j) for j in self.redis.zrangebyscore(self.keys.pending(), "-inf", now, start=0, num=limit)
        ]

    def sweep(self, publish: Publish, ended: Callable[[str], bool], now: float | None = None) -> list[str]:
        """Publish overdue jobs again; returns their ids. `ended(job_id)`: delivered or dead already."""
        now = time.time() if now is None else now
        republished = []
        for job_id in self.overdue(now):
            if ended(job_id) or self.publish_again(job_id, publish, now) is None:
                self.done(job_id)
                continue
            republished.append(job_id)
            log.warning(
                "job %s had no news for %.0fs: published again (the broker lost it)", job_id, self.grace
            )
        return republished

    def publish_again(self, entry_id: str, publish: Publish, now: float) -> str | None:
        """Publish the entry's job again as recorded, news due one grace from `now`; its queue, or None when
        nothing is recorded any more (the job ended)."""
        raw = self.redis.get(self.keys.pending_job(entry_id))
        if raw is None:
            return None
        entry = json.loads(str(raw))
        # A bulk chunk's entry id names the chunk, not a task: its copy gets a task id of its own.
        task_id = entry_id if entry.get("same_task_id", True) else None
        publish(entry["task"], entry["args"], task_id, entry["queue"], int(entry.get("lane") or 0))
        self.redis.zadd(self.keys.pending(), {entry_id: now + self.grace}, xx=True)
        return str(entry["queue"])

    def claim_sweep(self, owner: str, interval: float) -> bool:
        """One sweeper per interval across all workers."""
        return bool(self.redis.set(self.keys.sweeper_lock(), owner, nx=True, ex=max(1, int(interval))))


def realm_of(entry: dict[str, Any] | None) -> str | None:
    """The realm of a pending job's entry: a queued or running job has no result saying it yet.

    mail.send carries the job (its `realm`), mail.event (realm, event); other tasks (a bulk fan-out, a
    chunk) name no realm here.
    """
    if entry is None:
        return None
    task, args = entry.get("task"), entry.get("args")
    if not isinstance(args, list) or not args:
        return None
    if task == SEND_TASK and isinstance(args[0], dict):
        realm = args[0].get("realm")
    elif task == EVENT_TASK:
        realm = args[0]
    else:
        return None
    return realm if isinstance(realm, str) else None
