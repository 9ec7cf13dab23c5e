"""Messages a consumer popped and never recorded: found within seconds of the loss and published again.

kombu's Redis transport takes a message with BRPOP and records it as unacknowledged in a second step
(`QoS.append`). A worker killed between the two (SIGKILL, the OOM killer, a lost host), or whose
connection drops with the BRPOP reply on its way, takes the message with it: no queue, no unacked record
and no claim holds it any more. The pending ledger (pending.py) still does, but its sweep waits out
`MAILWORKER_LOST_JOB_GRACE` (30 minutes): far past a password reset's link.

This check closes that gap without touching the broker's hot path. kombu pushes on the head of each
priority list and pops its tail; a lease hand-back goes onto the tail, ahead of the rest. So a job
published before the oldest message still waiting in every list of its queue has been taken from that
queue; so has a job with a claim (its task ran). If no live process holds its claim and no worker holds
its message (not in the unacked hash), it was lost in that window, or with a worker that died within a
heartbeat of taking it (worker/broker/transport.py records such a job at the next beat), perhaps after
its end and before the bookkeeping that follows it. A job seen so in two checks two heartbeats apart is
published again under its id: its copy delivers it, or finds it ended and writes what the dead worker
did not (its result, the ledger's done). Should it not have been lost after all (hosts whose clocks
disagree by more than QUEUE_ORDER_SLACK_S), the copy is skipped by the job's claim or delivered-marker:
a wasted message, never a second mail.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from config.names import BULK_CHUNK_TASK, PUBLISHED_AT
from worker.jobs.pending import PendingJobs

log = logging.getLogger(__name__)

# Two publishes a few milliseconds apart may land in the other order, and the producers' clocks (which
# stamp both the ledger and the message header) may disagree a little: a job is taken as gone from its
# queue only when it was published this much before the oldest message still waiting there.
QUEUE_ORDER_SLACK_S = 2.0
# A suspect is published again when it was lost in checks this many intervals apart: a live consumer's
# pop and record take microseconds, and a transactional job it holds is recorded within one heartbeat
# (worker/broker/transport.py).
CONFIRM_ROUNDS = 2
# Entries looked at per check, oldest first (the ledger holds every queued job, but only those published
# before their queue's oldest waiting message are candidates, and they are the oldest).
SCAN_LIMIT = 5000

EMPTY = "empty"  # the queue has no message waiting: every job of it was taken
UNKNOWN = "unknown"  # the oldest waiting message carries no publish time (a foreign producer): no verdict
Oldest = float | str  # the publish time of the oldest message waiting in a queue, EMPTY or UNKNOWN


def taken_from_queue(published: float, oldest_waiting: Oldest, now: float, min_age: float) -> bool:
    """Has a job published at `published` left its queue, whose oldest waiting message is `oldest_waiting`?

    `published` is never earlier than the real publish (the ledger's entry is written after it), so the
    answer errs towards "still queued". A job younger than `min_age` is never judged: it may be on its way.
    """
    if now - published < min_age:
        return False
    if oldest_waiting == EMPTY:
        return True
    if oldest_waiting == UNKNOWN or isinstance(oldest_waiting, str):
        return False
    return published < oldest_waiting - QUEUE_ORDER_SLACK_S


def confirmed(first_seen: float | None, now: float, confirm_after: float) -> bool:
    """A suspect is published again once it was seen lost `confirm_after` seconds ago and is still lost."""
    return first_seen is not None and now - first_seen >= confirm_after


def message_time(raw: bytes | str | None) -> float | None:
    """The publish time a message (as kombu stores it in a Redis list) carries in its header."""
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(PUBLISHED_AT)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def held_entries(raw: bytes | str) -> list[str]:
    """The pending-ledger entries an unacked record (kombu: `[message, exchange, routing key]`) holds.

    A job's entry is its task id; a bulk chunk's entry is "<bulk job id>:<chunk>" (its copies get task ids
    of their own), read from the task's arguments.
    """
    try:
        message = json.loads(raw)[0]
        headers = message["headers"]
        entries = [str(headers["id"])]
        if headers.get("task") == BULK_CHUNK_TASK:
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            entries.append(f"{args[0]}:{args[1]}")
        return entries
    except (ValueError, TypeError, KeyError, IndexError):  # not a message of ours: holds nothing of ours
        return []


@dataclass(frozen=True)
class EntryKinds:
    """What the check needs to know of a pending entry, by its id (wired in tasks/signals.py)."""

    queue: Callable[[str], str]  # the queue the entry's message waits in
    claim_key: Callable[[str], str | None]  # the claim a worker holds while it works on the entry
    # A claim holder's process known to be gone although its heartbeat key lives on (it ran on this host).
    process_gone: Callable[[str], bool] = lambda process: False


Publish = Callable[[str, list[Any], str | None, str, int], None]  # (task, args, task id, queue, lane)


class LostMessages:
    def __init__(
        self,
        pending: PendingJobs,
        broker: redis.Redis,
        *,
        broker_prefix: str,
        interval: float,
        priority_steps: Iterable[int] = (0, 3, 6, 9),
        separator: str = "\x06\x16",
    ) -> None:
        self.pending = pending
        self.store = pending.redis
        self.broker = broker
        self.keys = pending.keys
        self.broker_prefix = broker_prefix  # kombu's global key prefix
        self.grace = pending.grace  # an entry's score is "published + grace" until a worker touches it
        self.interval = interval  # seconds between checks; a suspect is confirmed one interval later
        self.priority_steps = tuple(priority_steps)
        self.separator = separator

    def lists(self, queue: str) -> list[str]:
        """kombu's lists of one queue: "<prefix><queue>" and "<prefix><queue><sep><step>" per priority."""
        base = f"{self.broker_prefix}{queue}"
        return [base if step == 0 else f"{base}{self.separator}{step}" for step in self.priority_steps]

    def oldest_waiting(self, queues: Iterable[str]) -> dict[str, Oldest]:
        """Per queue: the publish time of the oldest message waiting in any of its lists (their tails)."""
        queues = sorted(set(queues))
        pipe = self.broker.pipeline(transaction=False)
        for queue in queues:
            for name in self.lists(queue):
                pipe.lindex(name, -1)
        tails = pipe.execute()
        per_queue = len(self.priority_steps)
        oldest: dict[str, Oldest] = {}
        for i, queue in enumerate(queues):
            waiting = [raw for raw in tails[i * per_queue : (i + 1) * per_queue] if raw is not None]
            times = [message_time(raw) for raw in waiting]
            if not waiting:
                oldest[queue] = EMPTY
            elif any(t is None for t in times):
                oldest[queue] = UNKNOWN
            else:
                oldest[queue] = min(t for t in times if t is not None)
        return oldest

    def suspects(self, kinds: EntryKinds, now: float) -> list[str]:
        """Entries lost right now: taken from their queue, and neither worked on nor held."""
        scored: list[tuple[Any, float]] = self.store.zrangebyscore(  # type: ignore[assignment]
            self.keys.pending(), "-inf", now - self.interval + self.grace, start=0, num=SCAN_LIMIT,
            withscores=True,
        )  # fmt: skip
        if not scored:
            return []
        entries = [(str(entry), float(score) - self.grace) for entry, score in scored]
        oldest = self.oldest_waiting(kinds.queue(entry) for entry, _ in entries)
        taken, near = [], []
        for entry, published in entries:
            waiting = oldest[kinds.queue(entry)]
            if taken_from_queue(published, waiting, now, min_age=self.interval):
                taken.append(entry)
            elif isinstance(waiting, float) and published < waiting + QUEUE_ORDER_SLACK_S:
                near.append(entry)  # published with the oldest waiting: queued, or taken with it
        if not taken and not near:
            return []
        holders = self._claim_holders(taken + near, kinds)
        # A claim proves the job was taken (its task ran); one whose holder is dead holds it no more.
        taken += [entry for entry in near if entry in holders and not holders[entry]]
        # A job that ended is published again too: its entry is still here because its worker died between
        # the end and the bookkeeping after it (its result, the ledger's done), and the copy, which finds it
        # ended, writes both.
        free = [entry for entry in taken if not holders.get(entry)]
        if not free:
            return []
        held = {e for raw in self.broker.hvals(f"{self.broker_prefix}unacked") for e in held_entries(raw)}
        return [entry for entry in free if entry not in held]

    def _claim_holders(self, entries: list[str], kinds: EntryKinds) -> dict[str, bool]:
        """{entry: is its claim's holder alive} for the entries that have a claim."""
        claims = {entry: key for entry in entries if (key := kinds.claim_key(entry))}
        pipe = self.store.pipeline(transaction=False)
        for key in claims.values():
            pipe.get(key)
        holders = {
            entry: str(holder).partition("|")[0]
            for entry, holder in zip(claims, pipe.execute(), strict=True)
            if holder is not None
        }
        pipe = self.store.pipeline(transaction=False)
        for process in holders.values():
            pipe.exists(self.keys.alive(process))
        return {
            entry: bool(beating) and not kinds.process_gone(process)
            for (entry, process), beating in zip(holders.items(), pipe.execute(), strict=True)
        }

    def check(self, kinds: EntryKinds, publish: Publish, now: float | None = None) -> list[str]:
        """One round: note new suspects, publish again those still lost one interval later; their ids."""
        now = time.time() if now is None else now
        lost_now = set(self.suspects(kinds, now))
        key = self.keys.lost_suspects()
        seen = {str(entry): float(at) for entry, at in self.store.hgetall(key).items()}
        republished = []
        for entry in sorted(lost_now):
            if not confirmed(seen.get(entry), now, CONFIRM_ROUNDS * self.interval):
                continue
            queue = self.pending.publish_again(entry, publish, now)
            if queue is None:  # ended meanwhile (its entry goes with it)
                continue
            republished.append(entry)
            log.warning(
                "job %s was taken from the %s queue and no live worker holds it (its worker died before"
                " recording it, or before the bookkeeping after its end): published again", entry, queue,
            )  # fmt: skip
        pipe = self.store.pipeline(transaction=False)
        gone = [entry for entry in seen if entry not in lost_now or entry in republished]
        if gone:
            pipe.hdel(key, *gone)
        fresh: dict[str | bytes, float] = {entry: now for entry in lost_now if entry not in seen}
        if fresh:
            pipe.hset(key, mapping=fresh)  # type: ignore[arg-type]
        pipe.expire(key, max(60, int(self.interval * 20)))
        pipe.execute()
        return republished

    def claim_round(self, owner: str) -> bool:
        """One checker per interval across all workers."""
        ttl_ms = max(100, int(self.interval * 900))  # a little under the interval: the next round is free
        return bool(self.store.set(self.keys.lost_check_lock(), owner, nx=True, px=ttl_ms))
