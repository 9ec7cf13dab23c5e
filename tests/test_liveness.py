"""Heartbeats, claims that die with their holder, the consumer registry and message leases (real Redis)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from config.keys import Keys
from worker.liveness.heartbeat import (
    BUSY,
    CLAIMED,
    TAKEN_OVER,
    Claims,
    Heartbeat,
    LiveWorkers,
    no_worker_message,
)
from worker.liveness.leases import LeaseRenewer, held_delivery_tags

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


def process(real_redis: Any, keys: Keys, name: str, *, beating: bool = True) -> Claims:
    """The claims of a (pretend) worker process called `name`, its heartbeat written once, no thread."""
    heartbeat = Heartbeat(real_redis, keys, lease=5, process=name)
    heartbeat._started = True  # no beating thread in a unit test: beat() by hand
    if beating:
        heartbeat.beat()
    return Claims(real_redis, keys, heartbeat, ttl=600)


def test_a_claim_keeps_other_live_processes_out_until_released(real_redis: Any, keys: Keys) -> None:
    first, second = process(real_redis, keys, "h:1:a"), process(real_redis, keys, "h:2:b")
    key = keys.claim("job-1")
    assert first.claim(key) == CLAIMED
    assert first.claim(key) == CLAIMED  # its own retry passes
    assert second.claim(key) == BUSY
    second.release(key)  # not the holder: no effect
    assert second.claim(key) == BUSY
    first.release(key)
    assert second.claim(key) == CLAIMED


def test_a_dead_holders_claim_is_taken_over_at_once(real_redis: Any, keys: Keys) -> None:
    """The claim's own TTL (the task time limit) does not matter: the holder's heartbeat is gone."""
    dead, alive = process(real_redis, keys, "h:1:a"), process(real_redis, keys, "h:2:b")
    key = keys.claim("job-1")
    assert dead.claim(key) == CLAIMED and real_redis.ttl(key) > 500
    real_redis.delete(keys.alive("h:1:a"))  # SIGKILL: no more beats, the key lapses
    assert alive.claim(key) == TAKEN_OVER
    assert real_redis.get(key).startswith("h:2:b|")


def test_a_release_that_missed_redis_is_done_on_the_next_beat(real_redis: Any, keys: Keys) -> None:
    """A Redis restart or a Sentinel failover during the release: the job is handed back, and its claim
    must not keep every redelivery waiting (for the task time limit) while this process lives on."""
    holder, other = process(real_redis, keys, "h:1:a"), process(real_redis, keys, "h:2:b")
    key = keys.claim("job-1")
    assert holder.claim(key) == CLAIMED
    script = holder._release

    def unreachable(**_: Any) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    holder._release = unreachable  # type: ignore[assignment]
    with pytest.raises(redis.ConnectionError):
        holder.release(key)
    with pytest.raises(redis.ConnectionError):  # still away at the next beat: kept for the one after
        holder.release_unreleased()
    assert other.claim(key) == BUSY
    holder._release = script
    for hook in holder.heartbeat.after_beat:  # the beating thread's round
        hook()
    assert other.claim(key) == CLAIMED


def test_a_heartbeat_lapses_one_lease_after_the_last_beat(real_redis: Any, keys: Keys) -> None:
    heartbeat = Heartbeat(real_redis, keys, lease=0.3, process="h:9:z")
    heartbeat.beat()
    assert real_redis.exists(keys.alive("h:9:z"))
    time.sleep(0.4)
    assert not real_redis.exists(keys.alive("h:9:z"))


def test_a_started_heartbeat_keeps_beating(real_redis: Any, keys: Keys) -> None:
    heartbeat = Heartbeat(real_redis, keys, lease=0.5, process="h:8:y")
    heartbeat.ensure_started()
    time.sleep(1.2)  # more than two leases
    assert real_redis.exists(keys.alive("h:8:y"))
    heartbeat.stop()
    assert not real_redis.exists(keys.alive("h:8:y"))  # a clean stop frees what it held at once


def test_the_registry_knows_who_serves_which_queue(real_redis: Any, keys: Keys) -> None:
    registry = LiveWorkers(real_redis, keys, lease=15)
    now = time.time()
    registry.register("transactional@a:h:1:x", ["transactional", "control"], started=now - 100, now=now)
    registry.register("bulk@a:h:2:y", ["bulk"], started=now - 100, now=now - 60)  # silent for 60 s
    assert [w.name for w in registry.serving("control", now)] == ["transactional@a"]
    assert registry.serving("bulk", now) == []
    _live, lapsed = registry.all(now)
    assert [w.name for w in lapsed] == ["bulk@a"]
    line = no_worker_message("bulk", lapsed, now)
    assert "no live worker consumes the bulk queue" in line and "bulk@a:h:2:y 60s ago" in line
    registry.unregister("bulk@a:h:2:y")
    assert registry.all(now)[1] == []


def test_the_consumer_renews_the_leases_of_what_it_holds_and_only_that(real_redis: Any, keys: Keys) -> None:
    from worker.runtime import runtime

    # A broker prefix of this test's own: the session's in-thread worker restores from the session's index.
    settings = runtime().settings.model_copy(
        update={"key_prefix": keys.prefix, "broker_key_prefix": f"{keys.prefix}:"}
    )
    index = f"{settings.broker_key_prefix}unacked_index"
    real_redis.zadd(index, {"held-1": 1.0, "held-2": 1.0, "someone-elses": 1.0})
    try:
        delivered = {"held-1": object(), "held-2": object(), "acked-meanwhile": object()}
        consumer = SimpleNamespace(
            hostname="transactional@test",
            task_consumer=SimpleNamespace(channel=SimpleNamespace(qos=SimpleNamespace(_delivered=delivered))),
            app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(
                consume_from={"transactional": SimpleNamespace(name="transactional")})))
        )  # fmt: skip
        assert sorted(held_delivery_tags(consumer)) == ["acked-meanwhile", "held-1", "held-2"]
        renewer = LeaseRenewer(settings, consumer)
        now = time.time()
        assert renewer.renew(now) == 3
        scores = dict(real_redis.zrange(index, 0, -1, withscores=True))
        assert scores["held-1"] == scores["held-2"] == pytest.approx(now)
        assert scores["someone-elses"] == 1.0  # another worker's message keeps its old lease
        assert "acked-meanwhile" not in scores  # XX: an acknowledged message is not brought back
        assert [w.queues for w in renewer.registry.serving("transactional")] == [("transactional",)]
        renewer.stop()
        assert renewer.registry.serving("transactional") == []
    finally:
        real_redis.zrem(index, "held-1", "held-2", "someone-elses")


def test_a_holder_of_this_host_that_exited_is_taken_over_before_its_heartbeat_lapses(
    real_redis: Any, keys: Keys
) -> None:
    """The OOM killer took a pool process: its heartbeat key lingers up to a lease, its pid is gone."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_name = f"{socket.gethostname()}:{gone.stdout.strip()}:abcdef"
    dead, alive = process(real_redis, keys, dead_name), process(real_redis, keys, "h:2:b")
    alive_here = process(real_redis, keys, f"{socket.gethostname()}:{os.getpid()}:live")
    key = keys.claim("job-1")
    assert dead.claim(key) == CLAIMED
    assert real_redis.exists(keys.alive(dead_name))  # still "beating" for up to a lease
    assert alive.claim(key) == TAKEN_OVER
    other = keys.claim("job-2")
    assert alive_here.claim(other) == CLAIMED
    assert alive.claim(other) == BUSY  # a live process of this host keeps its claim
