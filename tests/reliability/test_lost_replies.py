"""Servers that take the mail and lose or delay the reply, at DEFAULT settings.

- 10 % of the replies to the end of the data are lost (the server took the message, the connection drops
  before its 250): the job is retried after its backoff, never at once, with the same Message-ID; at most
  one extra copy per affected job, and every such job's result says `ambiguous`.
- A server that answers the end of the data after 12 s (RFC 5321 allows 10 minutes), with the realm's
  `timeout` at its default 10 s: every job is delivered once and the realm's circuit breaker never opens.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import CONTEXT, Cluster, outcome_counts, report, summary
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

RESET = {**CONTEXT, "link_expiration": 5}


def addresses(n: int, tag: str) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag}-{run}-{i}@example.com" for i in range(n)]


def realm_settings(sink: Sink) -> dict:
    return {"from": "noreply@example.com", "host": "127.0.0.1", "port": sink.port}  # timeouts: defaults


def test_lost_replies_after_the_data_cost_at_most_one_extra_copy_and_say_so(tmp_path: Path) -> None:
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink(lose_reply=0.1, seed=3) as sink:
        cluster.save_realm("acme", realm_settings(sink))
        jobs = {j.id: j for j in (cluster.job("acme", "password-reset", a, context=RESET)
                                  for a in addresses(200, "lost"))}  # fmt: skip
        cluster.worker(concurrency=2, queues=None)
        started = time.monotonic()
        for job in jobs.values():
            cluster.enqueue(job)
        results = cluster.wait_results(list(jobs), timeout=300)
        elapsed = time.monotonic() - started
        lost_replies = sink.counters["lost reply"]

    copies = {i: sink.accepted[job.to.lower()] for i, job in jobs.items()}
    affected = {i for i, r in results.items() if r.get("ambiguous")}
    counts = outcome_counts(results)
    message_ids_per_recipient = max(sink.message_ids.values())
    report("default-lost-replies-10pc", sent=len(jobs), lost_replies=lost_replies, affected_jobs=len(affected),
           extra_copies=sum(n - 1 for n in copies.values() if n > 1), max_copies=max(copies.values()),
           delivered=sum(1 for n in copies.values() if n >= 1), lost=sum(1 for n in copies.values() if n == 0),
           dead_lettered_ambiguous=counts["dead-lettered"], outcomes=dict(counts), elapsed_s=elapsed,
           **summary([r["sent_at"] - jobs[i].created_at for i, r in results.items() if r["status"] == "sent"]))  # fmt: skip
    assert lost_replies >= 10, "too few replies were lost: the scenario proves nothing"
    assert len(results) == len(jobs), "a job ended without a result"
    assert all(n >= 1 for n in copies.values()), "a mail was lost"
    assert max(copies.values()) <= 2, "more than one extra copy for a job"
    # Every job with a second copy says so; the copies of one job share one Message-ID.
    assert {i for i, n in copies.items() if n == 2} <= affected
    assert message_ids_per_recipient <= 2 and len(sink.message_ids) == len(jobs)
    dead = [r for r in results.values() if r["status"] == "dead-lettered"]
    assert all(r["reason"] == "ambiguous" and r["maybe_delivered"] for r in dead)


def test_a_12s_reply_to_the_data_is_waited_for_and_never_opens_the_breaker(tmp_path: Path) -> None:
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink(data_reply_delay=12) as sink:
        cluster.save_realm("acme", realm_settings(sink))
        jobs = {j.id: j for j in (cluster.job("acme", "password-reset", a, context=RESET)
                                  for a in addresses(10, "slow"))}  # fmt: skip
        cluster.worker(concurrency=2, queues=None)
        for job in jobs.values():
            cluster.enqueue(job)
        breaker_seen = set()
        deadline = time.monotonic() + 240
        results: dict = {}
        while len(results) < len(jobs) and time.monotonic() < deadline:
            state = cluster.redis.hgetall(f"{cluster.prefix}:breaker:acme")
            if state.get("open_until") not in (None, "0"):
                breaker_seen.add(state["open_until"])
            results = cluster.results(list(jobs))
            time.sleep(0.5)
        stats = cluster.stats("acme")

    copies = [sink.accepted[job.to.lower()] for job in jobs.values()]
    report("default-12s-final-reply", sent=len(jobs), delivered=sum(1 for n in copies if n >= 1),
           duplicated=sum(1 for n in copies if n > 1), breaker_opened=len(breaker_seen),
           circuit_open_waits=stats.get("circuit_open", 0),
           attempts=sorted(r.get("attempts") for r in results.values()),
           **summary([r["sent_at"] - jobs[i].created_at for i, r in results.items() if r["status"] == "sent"]))  # fmt: skip
    assert [r["status"] for r in results.values()] == ["sent"] * len(jobs)
    assert copies == [1] * len(jobs), "a slow reply made a second copy"
    assert all(r["attempts"] == 1 for r in results.values())
    assert not breaker_seen and stats.get("circuit_open", 0) == 0, "a slow server was taken for a dead one"
