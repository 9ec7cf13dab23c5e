"""Fault scenarios fast enough for every `make test`: permanent failures, a flapping server, e-mail bombing.

Real redis-server (private), real `mailworker worker` processes, real SMTP over loopback; each prints its
figures (`FIGURES <scenario>: ...`).
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.harness import (
    Cluster,
    attempts_histogram,
    latencies,
    outcome_counts,
    report,
    summary,
)
from tests.reliability.sink import Sink

pytestmark = pytest.mark.timeout(300)


def addresses(n: int, tag: str) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag}-{run}-{i}@example.com" for i in range(n)]


def test_permanent_failures_are_dead_lettered_with_the_reply_and_never_retried(cluster: Cluster, sink: Sink):
    cluster.save_realm("acme", sink.settings_dict())
    to = addresses(200, "perm")
    bad = set(to[::5])  # 40 recipients the server does not know
    for address in bad:
        sink.reject(address, f"550 5.1.1 <{address}>: mailbox unavailable")
    cluster.worker(concurrency=2)
    jobs = {j.id: j for j in (cluster.job("acme", "password-reset", a) for a in to)}
    started = time.monotonic()
    for job in jobs.values():
        cluster.enqueue(job)
    results = cluster.wait_results(list(jobs), timeout=90)
    elapsed = time.monotonic() - started

    counts = outcome_counts(results)
    dead = {i: r for i, r in results.items() if r["status"] == "dead-lettered"}
    report("permanent-failures", sent=len(jobs), delivered=counts["sent"], dead_lettered=len(dead),
           lost=len(jobs) - len(results), duplicated=sink.duplicates(), rejected_rcpts=sink.counters["rejected"],
           elapsed_s=elapsed, **summary(latencies(results, jobs)))  # fmt: skip
    assert len(results) == len(jobs)
    assert counts["sent"] == 160 and len(dead) == 40
    assert {jobs[i].to for i in dead} == bad
    for job_id, result in dead.items():
        assert (result["reason"], result["smtp_code"], result["attempts"]) == ("permanent", 550, 1)
        assert "mailbox unavailable" in result["error"]
        letter = cluster.runtime.dead_letters.get(job_id)
        assert (
            letter.reason == "permanent" and "550" in letter.error and "mailbox unavailable" in letter.error
        )
    assert sink.counters["rejected"] == 40  # one RCPT each: no retry of a 550
    assert sum(sink.accepted[a] for a in bad) == 0
    assert all(sink.accepted[a] == 1 for a in to if a not in bad)


def test_a_flapping_server_gets_every_message_at_most_once(cluster: Cluster):
    with Sink(flap=0.2, seed=7) as sink:
        cluster.save_realm("acme", sink.settings_dict())
        # 20% of commands fail: with ~5 commands per message an attempt succeeds one time in three, so
        # the job needs room for its attempts (P(40 failures in a row) ~ 1e-7).
        cluster.worker(concurrency=3, MAILWORKER_MAX_ATTEMPTS="40", MAILWORKER_RETRY_BASE_DELAY="0.05",
                       MAILWORKER_RETRY_MAX_DELAY="0.5")  # fmt: skip
        to = addresses(300, "flap")
        jobs = {j.id: j for j in (cluster.job("acme", "email-verification", a) for a in to)}
        started = time.monotonic()
        for job in jobs.values():
            cluster.enqueue(job)
        results = cluster.wait_results(list(jobs), timeout=150)
        elapsed = time.monotonic() - started
        sink.stop()

    counts = outcome_counts(results)
    faults = {k.removeprefix("fault "): v for k, v in sink.counters.items() if k.startswith("fault")}
    unsure = {i: r for i, r in results.items() if r["status"] == "dead-lettered"}
    report("smtp-flapping", sent=len(jobs), delivered=counts["sent"], lost=len(jobs) - len(results),
           duplicated=sink.duplicates(), dead_lettered_ambiguous=len(unsure), faults=faults,
           connections=sink.counters["connections"], attempts=attempts_histogram(results), elapsed_s=elapsed,
           **summary(latencies(results, jobs)))  # fmt: skip
    assert sum(faults.values()) >= 100, "the server did not flap: the test proves nothing"
    assert len(results) == len(jobs), "a job ended without a result"
    # A connection dropped after the end of the data is, to the client, a reply that never came: the mail
    # may have arrived. After two such attempts a job stops, dead-lettered `ambiguous` (it says so), so
    # no recipient ever gets more than two copies. This sink dropped without accepting: 0 copies then.
    assert all(r["reason"] == "ambiguous" and r["maybe_delivered"] for r in unsure.values()), unsure
    assert counts["sent"] + len(unsure) == len(jobs) and len(unsure) <= len(jobs) * 0.03, counts
    sent_to = {jobs[i].to for i, r in results.items() if r["status"] == "sent"}
    assert all(sink.accepted[a] == 1 for a in sent_to), "a message was lost or sent twice"
    assert sink.duplicates() == 0
    assert max(attempts_histogram(results)) > 1  # retries happened and are visible in the results


def test_email_bombing_sends_one_reset_and_drops_the_rest_with_a_reason(cluster: Cluster, sink: Sink):
    cluster.save_realm("acme", sink.settings_dict())
    cluster.worker(concurrency=3, MAILWORKER_RECIPIENT_COOLDOWN="30")  # the default: one per 30 s
    victim = f"victim-{uuid.uuid4().hex[:6]}@example.com"
    started = time.monotonic()
    ids = cluster.send_many("acme", "password-reset", [victim] * 1000)
    enqueue_s = time.monotonic() - started
    results = cluster.wait_results(ids, timeout=120)
    elapsed = time.monotonic() - started

    counts = outcome_counts(results)
    dropped = [r for r in results.values() if r["status"] == "dropped"]
    stats = cluster.stats("acme")
    report("email-bombing", requests=len(ids), enqueue_s=enqueue_s, delivered=counts["sent"],
           dropped=len(dropped), accepted_by_server=sink.accepted[victim], stats_dropped=stats.get("dropped_cooldown"),
           elapsed_s=elapsed)  # fmt: skip
    assert enqueue_s < 60  # "1,000 requests in a minute"
    assert len(results) == 1000
    assert counts["sent"] == 1 and len(dropped) == 999
    assert all(r["reason"] == "cooldown" and "30s" in r["error"] for r in dropped)
    assert sink.accepted[victim] == 1 and sink.total() == 1
    assert stats["dropped_cooldown"] == 999 and stats["sent"] == 1
