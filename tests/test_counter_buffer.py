"""Counters summed in the process and written once a second (worker/outcomes/buffer.py), on real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from config.keys import Keys
from tests.support.counting_redis import CountingRedis
from worker.jobs.stats import Stats
from worker.outcomes.buffer import CounterBuffer
from worker.outcomes.outcome import SENT, Outcome
from worker.outcomes.record import Outcomes
from worker.outcomes.tallies import Tallies


@pytest.fixture
def client(redis_url: str) -> Any:
    return CountingRedis.from_url(redis_url, decode_responses=True)


def test_a_thousand_outcomes_cost_a_handful_of_commands_and_every_count_arrives(
    client: Any, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    buffer = CounterBuffer(client, interval=60)  # written by close() here, not by its thread
    outcomes = Outcomes(client, keys, Stats(client, keys), buffer)
    tallies = Tallies(client, keys)
    before = client.commands
    for n in range(1000):
        outcomes.record(Outcome(SENT, "acme", f"job-{n}", "password-reset", "u@example.com"),
                        also=lambda pipe: tallies.queue_delivery(pipe, "transactional", 0.1))  # fmt: skip
    assert client.commands == before  # nothing written yet
    buffer.close()
    # One HINCRBY per distinct counter (hour, total, bucket), the sum, the realm's SADD and the hour's EXPIRE.
    assert client.commands - before == 6
    assert Stats(client, keys).last_hour("acme")["sent"] == 1000
    assert outcomes.totals()[("acme", SENT)] == 1000
    figures = tallies.read()
    assert figures.buckets["transactional"]["0.25"] == 1000 and figures.sums[
        "transactional"
    ] == pytest.approx(100)
    assert client.ttl(keys.stats("acme", int(time.time() // 3600))) > 0
    client.delete(keys.outcome_totals(), keys.metric_totals(), keys.stats_realms(),
                  keys.stats("acme", int(time.time() // 3600)))  # fmt: skip


def test_the_thread_writes_within_the_interval(client: Any, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    buffer = CounterBuffer(client, interval=0.2)
    buffer.hincrby(keys.outcome_totals(), "acme\tsent", 3)
    buffer.execute()
    deadline = time.monotonic() + 5
    while client.hget(keys.outcome_totals(), "acme\tsent") is None:
        assert time.monotonic() < deadline, "the buffer's thread wrote nothing"
        time.sleep(0.05)
    assert client.hget(keys.outcome_totals(), "acme\tsent") == "3" and not buffer.pending()
    buffer.close()
    client.delete(keys.outcome_totals())


def test_counts_survive_a_redis_that_is_away_for_a_round(key_prefix: str, redis_url: str) -> None:
    keys = Keys(key_prefix)
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    buffer = CounterBuffer(away, interval=60)
    buffer.hincrby(keys.outcome_totals(), "acme\tsent", 2)
    with pytest.raises(redis.ConnectionError):
        buffer.flush()
    assert buffer.pending()  # kept for the next round
    buffer.redis = redis.Redis.from_url(redis_url, decode_responses=True)
    buffer.flush()
    assert buffer.redis.hget(keys.outcome_totals(), "acme\tsent") == "2"
    buffer.redis.delete(keys.outcome_totals())


def test_interval_zero_writes_at_every_execute(client: Any, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    buffer = CounterBuffer(client, interval=0)
    buffer.hincrby(keys.outcome_totals(), "acme\tsent").execute()
    assert client.hget(keys.outcome_totals(), "acme\tsent") == "1"
    client.delete(keys.outcome_totals())
