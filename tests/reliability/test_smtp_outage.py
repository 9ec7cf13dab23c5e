"""The realm's SMTP server is down for 30 s, then back: every message is delivered after the recovery.

While it is down, connections are refused: attempts fail fast, the realm's circuit breaker opens after 3 of
them, and the jobs wait out cool-offs instead of knocking (each wait counts as an attempt, visible in the
results). When the server is back, the next probe closes the circuit and the backlog drains.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.harness import Cluster, attempts_histogram, latencies, outcome_counts, report, summary
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(400)]

DOWN_S = 30


def test_smtp_down_for_30s_then_back_delivers_everything_with_retries_visible(tmp_path):
    env = {
        "MAILWORKER_MAX_ATTEMPTS": "12",
        "MAILWORKER_RETRY_BASE_DELAY": "1",
        "MAILWORKER_RETRY_MAX_DELAY": "8",
        "MAILWORKER_BREAKER_COOLOFF": "5",
        "MAILWORKER_BREAKER_MAX_COOLOFF": "10",
    }
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, **env) as cluster, Sink() as sink:
        cluster.save_realm("acme", sink.settings_dict())
        cluster.worker(concurrency=4)
        before = {j.id: j for j in (cluster.job("acme", "password-reset", f"pre-{run}-{i}@example.com")
                                    for i in range(50))}  # fmt: skip
        for job in before.values():
            cluster.enqueue(job)
        assert len(cluster.wait_results(list(before), timeout=60)) == 50

        sink.stop()  # connections refused from now on
        down_at = time.monotonic()
        during = {j.id: j for j in (cluster.job("acme", "password-reset", f"down-{run}-{i}@example.com")
                                    for i in range(450))}  # fmt: skip
        for job in during.values():
            cluster.enqueue(job)
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        early = cluster.results(list(during))
        breaker_state = cluster.runtime.breaker.state("acme")
        sink.start()  # back, on the same port
        back_at = time.monotonic()
        results = cluster.wait_results(list(during), timeout=180)
        drained_s = time.monotonic() - back_at
        stats = cluster.stats("acme")

    counts = outcome_counts(results)
    after_recovery = [r["sent_at"] - (time.time() - (time.monotonic() - back_at)) for r in results.values()
                      if r["status"] == "sent"]  # fmt: skip
    report("smtp-down-30s", sent=len(during), delivered=counts["sent"], lost=len(during) - counts["sent"],
           duplicated=sink.duplicates(), dead_lettered=counts["dead-lettered"], finished_while_down=len(early),
           attempts=attempts_histogram(results), circuit_open_waits=stats.get("circuit_open", 0),
           drained_after_recovery_s=drained_s, **summary(latencies(results, during)))  # fmt: skip
    assert early == {}, "nothing can finish while the server is down (no dead letter, no false success)"
    assert breaker_state.get("open_until"), "the breaker should have opened during the outage"
    assert counts["sent"] == len(during) and sink.duplicates() == 0
    assert all(sink.accepted[j.to] == 1 for j in during.values())
    assert min(attempts_histogram(results)) >= 2  # every one of them was retried, and the result says so
    assert all(t >= -1 for t in after_recovery)  # delivered after the recovery, not before
