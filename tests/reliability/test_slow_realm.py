"""One realm's broken server must not stall everyone else: realm A black-holes, realm B keeps its latency.

A's server accepts TCP connections and never says a word, so each connection attempt holds a prefork worker
process for A's connect_timeout (10 s, the default). Without the per-realm circuit breaker every process
ends up waiting on A. With it, after 3 such failures A's jobs stop connecting (one probe per cool-off), and
B's 100 password resets see about the latency they see when A is healthy.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.harness import Cluster, latencies, outcome_counts, percentile, report
from tests.reliability.sink import Sink
from tests.support.smtp_server import holding_listener

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(400)]

CONCURRENCY = 4
MAX_ATTEMPTS = 4
CONNECT_TIMEOUT = 10.0
COOLOFF = 5.0
MAX_COOLOFF = 10.0


def burst(cluster: Cluster, realm: str, tag: str, n: int) -> dict:
    jobs = {j.id: j for j in (cluster.job(realm, "password-reset", f"{tag}-{uuid.uuid4().hex[:8]}@example.com")
                              for _ in range(n))}  # fmt: skip
    for job in jobs.values():
        cluster.enqueue(job)
    return jobs


def test_a_black_holed_realm_does_not_slow_down_another_realm(tmp_path):
    env = {
        "MAILWORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "MAILWORKER_RETRY_BASE_DELAY": "1",
        "MAILWORKER_RETRY_MAX_DELAY": "5",
        "MAILWORKER_BREAKER_THRESHOLD": "3",
        "MAILWORKER_BREAKER_COOLOFF": str(COOLOFF),
        "MAILWORKER_BREAKER_MAX_COOLOFF": str(MAX_COOLOFF),
    }
    with (
        Cluster.start(tmp_path, **env) as cluster,
        Sink() as sink_b,
        holding_listener() as (port_a, accepts_a),
    ):
        cluster.save_realm("realm-b", sink_b.settings_dict())
        cluster.save_realm("realm-a", {"from": "noreply@a.example", "host": "127.0.0.1", "port": port_a,
                                       "connect_timeout": CONNECT_TIMEOUT, "timeout": 10})  # fmt: skip
        cluster.worker(concurrency=CONCURRENCY)

        # 1. B alone: its latency without A's trouble (a warm-up burst first, so both runs meet warm workers).
        cluster.wait_results(list(burst(cluster, "realm-b", "warm", 20)), timeout=60)
        base_jobs = burst(cluster, "realm-b", "base", 100)
        base = cluster.wait_results(list(base_jobs), timeout=120)
        base_lat = latencies(base, base_jobs)

        # 2. A's server goes dark with 40 of A's jobs queued. Its first wave holds processes for
        #    connect_timeout; the breaker opens after 3 failures.
        trouble_at = time.time()
        a_jobs = burst(cluster, "realm-a", "a", 40)
        deadline = time.monotonic() + 3 * CONNECT_TIMEOUT
        while not cluster.runtime.breaker.state("realm-a").get("open_until") and time.monotonic() < deadline:
            time.sleep(0.2)
        opened_after = time.time() - trouble_at
        assert cluster.runtime.breaker.state("realm-a").get("open_until"), "the breaker never opened"

        # 3. While A's jobs keep retrying (and probing), B sends its 100 again.
        trouble_jobs = burst(cluster, "realm-b", "trouble", 100)
        trouble = cluster.wait_results(list(trouble_jobs), timeout=120)
        trouble_lat = latencies(trouble, trouble_jobs)

        # 4. A's jobs dead-letter on schedule: after MAX_ATTEMPTS attempts, in bounded time.
        a_results = cluster.wait_results(list(a_jobs), timeout=180)
        a_connections = len(accepts_a)
        stats_a = cluster.stats("realm-a")
        a_lifetimes = [cluster.runtime.dead_letters.get(i).died_at - a_jobs[i].created_at for i in a_results]

    base_p99, trouble_p99 = percentile(base_lat, 99), percentile(trouble_lat, 99)
    a_counts = outcome_counts(a_results)
    # Worst case per attempt: a probe's connect_timeout, then a wait of at most the capped cool-off (+20%, +1 s).
    schedule_bound = MAX_ATTEMPTS * (CONNECT_TIMEOUT + MAX_COOLOFF * 1.2 + 1) + 15
    report("slow-realm", b_sent=200, b_delivered=sum(outcome_counts(x)["sent"] for x in (base, trouble)),
           b_p50_base_s=percentile(base_lat, 50), b_p99_base_s=base_p99, b_p50_trouble_s=percentile(trouble_lat, 50),
           b_p99_trouble_s=trouble_p99, ratio_p99=trouble_p99 / base_p99, breaker_opened_after_s=opened_after,
           a_jobs=len(a_jobs), a_dead_lettered=a_counts["dead-lettered"], a_connections=a_connections,
           a_attempts=sum(r["attempts"] for r in a_results.values()), a_circuit_open_waits=stats_a.get("circuit_open"),
           a_time_to_dead_letter_max_s=max(a_lifetimes), schedule_bound_s=schedule_bound)  # fmt: skip
    assert outcome_counts(base)["sent"] == 100 and outcome_counts(trouble)["sent"] == 100
    assert trouble_p99 <= 2 * base_p99, f"B's p99 went from {base_p99:.3f}s to {trouble_p99:.3f}s"
    assert len(a_results) == len(a_jobs) and a_counts["dead-lettered"] == len(a_jobs)
    assert all(r["reason"] == "exhausted" and r["attempts"] == MAX_ATTEMPTS for r in a_results.values())
    assert max(a_lifetimes) <= schedule_bound
    # The breaker is what bounds A's cost: far fewer connections than attempts.
    assert a_connections <= CONCURRENCY + 12 and a_connections * 4 < len(a_jobs) * MAX_ATTEMPTS
