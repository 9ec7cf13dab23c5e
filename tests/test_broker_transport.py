"""A transactional job held in memory, recorded by the next beat (worker/broker/transport.py), real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from config.names import SEND_TASK, TEST_CONNECTION_TASK


@pytest.fixture
def conn(redis_url: str, key_prefix: str) -> Iterator[Any]:
    from kombu import Connection

    with Connection(redis_url, transport="worker.broker.transport:Transport",
                    transport_options={"global_keyprefix": f"{key_prefix}:"}) as connection:  # fmt: skip
        yield connection


def unacked(real_redis: Any, key_prefix: str) -> tuple[int, int]:
    return real_redis.hlen(f"{key_prefix}:unacked"), real_redis.zcard(f"{key_prefix}:unacked_index")


def test_a_job_acknowledged_before_the_beat_costs_no_record(
    conn: Any, real_redis: Any, key_prefix: str
) -> None:
    queue = conn.SimpleQueue("transactional")
    queue.put({"n": 1}, headers={"task": SEND_TASK, "id": "j1"})
    message = queue.get(timeout=5)
    assert unacked(real_redis, key_prefix) == (0, 0)  # held in memory
    message.ack()
    assert unacked(real_redis, key_prefix) == (0, 0)
    queue.close()


def test_a_job_held_past_the_beat_gets_kombus_record_and_loses_it_at_the_ack(
    conn: Any, real_redis: Any, key_prefix: str
) -> None:
    queue = conn.SimpleQueue("transactional")
    queue.put({"n": 2}, headers={"task": SEND_TASK, "id": "j2"})
    message = queue.get(timeout=5)
    qos = queue.channel.qos
    assert qos.record_held(time.time(), real_redis, f"{key_prefix}:") == 1
    assert unacked(real_redis, key_prefix) == (1, 1)
    assert qos.record_held(time.time(), real_redis, f"{key_prefix}:") == 0  # once
    message.ack()
    assert unacked(real_redis, key_prefix) == (0, 0)
    queue.close()


def test_other_tasks_are_recorded_at_once(conn: Any, real_redis: Any, key_prefix: str) -> None:
    queue = conn.SimpleQueue("control")
    queue.put({"n": 3}, headers={"task": TEST_CONNECTION_TASK, "id": "t3"})
    message = queue.get(timeout=5)
    assert unacked(real_redis, key_prefix) == (1, 1)
    message.ack()
    assert unacked(real_redis, key_prefix) == (0, 0)
    queue.close()


def test_a_rejected_or_handed_back_job_held_in_memory_goes_back_to_its_queue(
    conn: Any, real_redis: Any, key_prefix: str
) -> None:
    queue = conn.SimpleQueue("transactional")
    queue.put({"n": 4}, headers={"task": SEND_TASK, "id": "j4"})
    queue.get(timeout=5).reject(requeue=True)  # a pool process died: Celery requeues
    waiting = f"{key_prefix}:transactional"  # (kombu's len() of a queue ignores the global key prefix)
    assert real_redis.llen(waiting) == 1 and unacked(real_redis, key_prefix) == (0, 0)
    again = queue.get(timeout=5)
    assert again.headers["id"] == "j4" and again.delivery_info.get("redelivered") is not False
    queue.channel.qos.restore_unacked_once()  # a warm shutdown: what the consumer holds goes back
    assert real_redis.llen(waiting) == 1
    real_redis.delete(waiting)
    queue.close()


def test_a_held_job_redis_would_not_take_back_goes_back_with_the_next_beat(
    conn: Any, real_redis: Any, key_prefix: str
) -> None:
    """A Sentinel failover: the consumer hands back what it holds while no master answers. The message
    stays in the process and the beat's own connection (which finds the new master) puts it back."""
    import redis

    queue = conn.SimpleQueue("transactional")
    queue.put({"n": 5}, headers={"task": SEND_TASK, "id": "j5"})
    queue.get(timeout=5)
    qos = queue.channel.qos
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    qos.restore_unacked(client=away)  # what a consumer does as its connection breaks
    waiting = f"{key_prefix}:transactional"
    assert real_redis.llen(waiting) == 0  # not back yet, not lost either:
    assert qos.return_unreturned(real_redis, f"{key_prefix}:") == 1
    assert real_redis.llen(waiting) == 1 and qos.return_unreturned(real_redis, f"{key_prefix}:") == 0
    real_redis.delete(waiting)
    queue.close()
