"""A realm's primary SMTP server is black-holed (it accepts TCP and never says a word), its secondary is up:
every password reset is delivered, at once, exactly once; and when the primary is back, mail goes there
again as soon as its circuit breaker closes.

The resets come as a steady stream (40 per second, 5 s), not one burst: the figure is what a user waiting
for the mail sees while the primary is dark, not how fast 4 processes drain a queue. The first jobs wait out the primary's greeting time-out (1 s here) and then go to the secondary in the
same attempt; after 3 such failures the primary's breaker opens and the rest go to the secondary without
trying the primary (docs/delivery.md#smtp-failover).
"""

from __future__ import annotations

import time
import uuid

import pytest

from config.keys import SECONDARY
from tests.reliability.harness import Cluster, attempts_histogram, latencies, outcome_counts, report, summary
from tests.reliability.sink import Sink
from tests.support.smtp_server import holding_listener

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(400)]

RESETS = 200
RATE = 40.0  # resets per second: 5 s of traffic while the primary is dark
PRIMARY_TIMEOUT_S = 1.0


def test_smtp_failover_black_holed_primary_every_reset_delivered_on_the_secondary(tmp_path):
    env = {"MAILWORKER_BREAKER_COOLOFF": "3", "MAILWORKER_BREAKER_MAX_COOLOFF": "6"}
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, **env) as cluster, Sink() as secondary, \
            holding_listener() as (port, primary_accepts):  # fmt: skip
        cluster.save_realm("acme", {"from": "noreply@example.com", "host": "127.0.0.1", "port": port,
                                    "connect_timeout": PRIMARY_TIMEOUT_S, "timeout": PRIMARY_TIMEOUT_S})  # fmt: skip
        cluster.runtime.store.for_server(SECONDARY).save("acme", secondary.settings_dict())
        cluster.worker(concurrency=4)
        jobs = {}
        started = time.monotonic()
        for i in range(RESETS):  # a steady stream of resets, as users ask for them (RATE per second)
            job = cluster.job("acme", "password-reset", f"fo-{run}-{i}@example.com")
            jobs[job.id] = job
            cluster.enqueue(job)
            time.sleep(max(0.0, started + (i + 1) / RATE - time.monotonic()))
        results = cluster.wait_results(list(jobs), timeout=120)
        burst_s = time.monotonic() - started
        primary_tries = len(primary_accepts)
        stats = cluster.stats("acme")
        breaker = cluster.runtime.breaker.state("acme")

    counts = outcome_counts(results)
    servers = {s: sum(1 for r in results.values() if r.get("server") == s) for s in ("primary", "secondary")}
    figures = summary(latencies(results, jobs))
    report("smtp-failover", sent=RESETS, delivered=counts["sent"], lost=RESETS - counts["sent"],
           duplicated=secondary.duplicates(), on_secondary=servers["secondary"], on_primary=servers["primary"],
           primary_connections=primary_tries, failover_count=stats.get("failover", 0),
           attempts=attempts_histogram(results), stream_s=burst_s, **figures)  # fmt: skip
    assert counts["sent"] == RESETS, f"not all delivered: {counts}"
    assert secondary.duplicates() == 0 and all(secondary.accepted[j.to] == 1 for j in jobs.values())
    assert servers["secondary"] == RESETS and stats.get("failover") == RESETS
    assert set(attempts_histogram(results)) == {1}, "failover happens within the attempt, no retry"
    assert figures["p99_s"] < 2.0, f"transactional p99 {figures['p99_s']:.2f}s"
    assert breaker.get("open_until"), "the primary's breaker should have opened"
    assert primary_tries < RESETS / 4, "an open breaker stops the jobs from trying the primary"


def test_smtp_failover_back_to_the_primary_when_its_breaker_closes(tmp_path):
    env = {"MAILWORKER_BREAKER_COOLOFF": "2", "MAILWORKER_BREAKER_MAX_COOLOFF": "2"}
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, **env) as cluster, Sink() as secondary, Sink() as primary:
        cluster.save_realm(
            "acme", primary.settings_dict(connect_timeout=PRIMARY_TIMEOUT_S, timeout=PRIMARY_TIMEOUT_S)
        )
        cluster.runtime.store.for_server(SECONDARY).save("acme", secondary.settings_dict())
        cluster.worker(concurrency=2)
        primary.stop()  # refused from now on
        down = cluster.send_many("acme", "password-reset", [f"down-{run}-{i}@example.com" for i in range(30)])
        down_results = cluster.wait_results(down, timeout=60)
        primary.start()  # back, on the same port
        time.sleep(3)  # the cool-off ends: the next job probes the primary, its success closes the breaker
        back = []
        for i in range(20):
            back += cluster.send_many("acme", "password-reset", [f"back-{run}-{i}@example.com"])
            time.sleep(0.1)
        back_results = cluster.wait_results(back, timeout=60)

    on = {name: sum(1 for r in results.values() if r.get("server") == "primary")
          for name, results in (("down", down_results), ("back", back_results))}  # fmt: skip
    report("smtp-failover-back", down_sent=len(down), down_on_primary=on["down"], back_sent=len(back),
           back_on_primary=on["back"], duplicated=secondary.duplicates() + primary.duplicates())  # fmt: skip
    assert outcome_counts(down_results)["sent"] == 30 and on["down"] == 0
    assert outcome_counts(back_results)["sent"] == 20 and on["back"] >= 18
    assert secondary.duplicates() == 0 and primary.duplicates() == 0
