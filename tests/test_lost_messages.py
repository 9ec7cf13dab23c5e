"""A message a consumer popped and never recorded (it died in between) is found and published again.

The decisions are tables; the check itself runs against real Redis with messages kombu itself published
and consumed (a consumer that took one and holds it unacknowledged, others popped and gone).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from config.keys import Keys
from config.names import BULK_CHUNK_TASK, PUBLISHED_AT, SEND_TASK
from worker.jobs.lost import (
    EMPTY,
    QUEUE_ORDER_SLACK_S,
    UNKNOWN,
    EntryKinds,
    LostMessages,
    confirmed,
    held_entries,
    message_time,
    taken_from_queue,
)
from worker.jobs.pending import PendingJobs

NOW = 1_000_000.0


@pytest.mark.parametrize(
    "published, oldest_waiting, taken",
    [
        (NOW - 60, EMPTY, True),  # nothing waits: every job of the queue was taken
        (NOW - 60, UNKNOWN, False),  # a foreign message at the tail: no verdict
        (NOW - 60, NOW - 10, True),  # published well before the oldest still waiting
        (NOW - 11, NOW - 10, False),  # within the slack: the two may have been pushed in the other order
        (NOW - 10 - QUEUE_ORDER_SLACK_S - 0.01, NOW - 10, True),
        (NOW - 5, NOW - 60, False),  # behind the oldest waiting: still queued
        (NOW - 1, EMPTY, False),  # too young to judge: it may be on its way to a worker
    ],
)
def test_taken_from_queue(published: float, oldest_waiting: float | str, taken: bool) -> None:
    assert taken_from_queue(published, oldest_waiting, NOW, min_age=3) is taken


@pytest.mark.parametrize(
    "first_seen, republish",
    [(None, False), (NOW, False), (NOW - 2.9, False), (NOW - 3, True), (NOW - 60, True)],
)
def test_a_suspect_is_published_again_only_when_seen_lost_one_interval_earlier(
    first_seen: float | None, republish: bool
) -> None:
    assert confirmed(first_seen, NOW, confirm_after=3) is republish


def kombu_message(task_id: str, task: str = SEND_TASK, args: list[Any] | None = None, **headers: Any) -> str:
    body = base64.b64encode(json.dumps([args or [], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "headers": {"id": task_id, "task": task, **headers},
                       "properties": {"body_encoding": "base64"}, "content-type": "application/json"})  # fmt: skip


@pytest.mark.parametrize(
    "record, entries",
    [
        (json.dumps([json.loads(kombu_message("j1")), "", "transactional"]), ["j1"]),
        (
            json.dumps([json.loads(kombu_message("t9", BULK_CHUNK_TASK, ["bulk-7", 3])), "", "bulk"]),
            ["t9", "bulk-7:3"],
        ),
        ("not json", []),
        (json.dumps([{"headers": {}}, "", ""]), []),
    ],
)
def test_the_entries_an_unacked_record_holds(record: str, entries: list[str]) -> None:
    assert held_entries(record) == entries


@pytest.mark.parametrize(
    "raw, when", [(kombu_message("j", **{PUBLISHED_AT: 12.5}), 12.5), (kombu_message("j"), None), ("{", None)]
)
def test_the_publish_time_a_message_carries(raw: str, when: float | None) -> None:
    assert message_time(raw) == when


# ---- against real Redis, with kombu's own messages --------------------------------------------------------


@pytest.fixture
def broker(redis_url: str, key_prefix: str) -> Iterator[Any]:
    """A kombu connection of the test's own (its global key prefix), with kombu's own Redis transport: a
    message it takes is recorded in the unacked hash at once, as worker/broker/transport.py records a
    transactional job held past a heartbeat."""
    from kombu import Connection

    with Connection(redis_url, transport="kombu.transport.redis:Transport",
                    transport_options={"global_keyprefix": f"{key_prefix}:"}) as conn:  # fmt: skip
        yield conn


@pytest.fixture
def lost(real_redis: Any, key_prefix: str) -> Iterator[LostMessages]:
    pending = PendingJobs(real_redis, Keys(key_prefix), grace=1800, keep=3600)
    yield LostMessages(pending, real_redis, broker_prefix=f"{key_prefix}:", interval=3)
    for key in real_redis.scan_iter(match=f"{key_prefix}:*", count=1000):  # the queues, ledger, claims
        real_redis.delete(key)


def publish(queue: Any, lost: LostMessages, job: str, at: float, lane: int = 0) -> None:
    """A job as a producer publishes it at `at`: the message (with its publish time), its ledger entry."""
    queue.put({"job": job}, headers={"id": job, "task": SEND_TASK, PUBLISHED_AT: at}, priority=lane)
    lost.pending.track(job, SEND_TASK, [{"id": job}], "transactional", lane=lane)
    lost.store.zadd(lost.keys.pending(), {job: at + lost.grace})  # the ledger's score: published + grace


def kinds_of(lost: LostMessages) -> EntryKinds:
    return EntryKinds(queue=lambda entry: "transactional", claim_key=lost.keys.claim)


def test_only_the_message_a_dead_consumer_popped_is_published_again(
    broker: Any, lost: LostMessages, real_redis: Any
) -> None:
    keys = lost.keys
    queue = broker.SimpleQueue("transactional")
    for job in ("lost", "held", "worked-on", "ended", "holder-died", "waiting"):
        # The one still waiting was published last, 10 s after the others: they were all taken.
        publish(queue, lost, job, time.time() - (0 if job == "waiting" else 10))
    lists = lost.lists("transactional")
    assert real_redis.rpop(lists[0]) is not None  # "lost": popped by a consumer that died at once
    held = queue.get(timeout=5)  # "held": a live consumer's, in kombu's unacked hash
    assert held.headers["id"] == "held"
    real_redis.rpop(lists[0])  # "worked-on": its worker claimed it (below)
    real_redis.rpop(lists[0])  # "ended": its job was sent
    real_redis.rpop(lists[0])  # "holder-died": claimed by a process whose heartbeat is gone
    real_redis.set(keys.claim("worked-on"), "host:1:abc|1")
    real_redis.set(keys.alive("host:1:abc"), "1", ex=60)
    real_redis.set(keys.claim("holder-died"), "host:2:def|1")
    kinds = kinds_of(lost)
    published: list[tuple[str, str | None, int]] = []

    def republish(task: str, args: list[Any], task_id: str | None, queue_name: str, lane: int) -> None:
        published.append((task, task_id, lane))

    now = time.time()
    # "ended" too: its worker died after the end, before its result and the ledger's done; its copy
    # finds it ended and writes both.
    assert sorted(lost.suspects(kinds, now)) == ["ended", "holder-died", "lost"]
    assert lost.check(kinds, republish, now) == []  # seen once: it may be on its way
    assert lost.check(kinds, republish, now + 3) == []  # one interval later: still not confirmed
    assert lost.check(kinds, republish, now + 6) == ["ended", "holder-died", "lost"]
    assert [task_id for _, task_id, _ in published] == ["ended", "holder-died", "lost"]
    # Published again: news is expected one grace from now, they are no suspects any more.
    assert lost.check(kinds, republish, now + 9) == [] and len(published) == 3
    assert real_redis.hlen(keys.lost_suspects()) == 0
    held.ack()


def test_a_message_still_queued_behind_others_is_never_a_suspect(broker: Any, lost: LostMessages) -> None:
    queue = broker.SimpleQueue("transactional")
    for n in range(20):
        publish(queue, lost, f"j{n}", time.time(), lane=n % 10)
    assert lost.suspects(kinds_of(lost), time.time() + 3600) == []  # an hour in the queue is slow, not lost


def test_a_job_taken_with_the_oldest_waiting_is_found_by_its_dead_holders_claim(
    broker: Any, lost: LostMessages, real_redis: Any
) -> None:
    """A burst published within one second: queue order cannot tell the job a dead worker ran from its
    neighbours still queued. Its claim can: the job ran, and the process holding it is gone."""
    keys = lost.keys
    queue = broker.SimpleQueue("transactional")
    at = time.time() - 10
    for job in ("ran-and-died", "ran-and-lives", "queued"):
        publish(queue, lost, job, at)
    lists = lost.lists("transactional")
    real_redis.rpop(lists[0])
    real_redis.rpop(lists[0])
    real_redis.set(keys.claim("ran-and-died"), "host:9:gone|1")  # no heartbeat: the process is dead
    real_redis.set(keys.claim("ran-and-lives"), "host:8:live|1")
    real_redis.set(keys.alive("host:8:live"), "1", ex=60)
    assert lost.suspects(kinds_of(lost), time.time()) == ["ran-and-died"]
