"""Redis Sentinel: the master SIGKILLed mid-burst, the replica promoted, everyone follows it by themselves.

One master (AOF, appendfsync always), one replica, three sentinels, all on 127.0.0.1 (tests/support/sentinel.py).
Workers, the producer (this process) and the store are given only the sentinels' addresses and the master's
name (MAILWORKER_SENTINEL_MASTER). What asynchronous replication can lose, and what the pending-job ledger
brings back, is in docs/operations.md ("Redis Sentinel") and docs/reliability.md.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.reliability.harness import Cluster, outcome_counts, report
from tests.reliability.sink import Sink
from tests.support.sentinel import MASTER_NAME, SentinelGroup

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

JOBS = 2000
CONCURRENCY = 4
KILL_AT = 500  # delivered before the master dies


class Producer(threading.Thread):
    """Publishes every job at a steady pace, as an IAM would; a publish that fails is tried again (same id)."""

    def __init__(self, cluster: Cluster, jobs: list, per_second: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.cluster, self.jobs, self.pause = cluster, jobs, 1 / per_second
        self.retries = 0
        self.longest_stall_s = 0.0

    def run(self) -> None:
        for job in self.jobs:
            failing_since = None
            while True:
                try:
                    self.cluster.enqueue(job)
                    break
                except Exception:  # the master is gone: kombu and redis-py ask the sentinels again
                    self.retries += 1
                    failing_since = failing_since or time.monotonic()
                    time.sleep(0.2)
            if failing_since is not None:
                self.longest_stall_s = max(self.longest_stall_s, time.monotonic() - failing_since)
            time.sleep(self.pause)


def test_sentinel_failover_mid_burst_loses_nothing_and_sends_nothing_twice(tmp_path):
    with SentinelGroup.start() as group, Sink() as sink:
        assert group.master is not None and group.replica is not None
        url = group.url
        cluster = Cluster(group.master, f"mwrel-{uuid.uuid4().hex[:8]}", tmp_path, {
            "MAILWORKER_STORE_URL": url, "MAILWORKER_BROKER_URL": url, "MAILWORKER_RESULT_BACKEND": url,
            "MAILWORKER_SENTINEL_MASTER": MASTER_NAME,
            # The ledger's sweep, sooner than in production, so the scenario sees what it republishes.
            "MAILWORKER_LOST_JOB_GRACE": "60", "MAILWORKER_SWEEP_INTERVAL": "5",
        })  # fmt: skip
        try:
            run_failover(cluster, group, sink)
        finally:
            for worker in cluster.workers:
                worker.stop()
            cluster.close()


def run_failover(cluster: Cluster, group: SentinelGroup, sink: Sink) -> None:
    cluster.save_realm("acme", sink.settings_dict())
    run = uuid.uuid4().hex[:6]
    jobs = {
        j.id: j
        for j in (cluster.job("acme", "password-reset", f"s-{run}-{i}@example.com") for i in range(JOBS))
    }
    workers = [cluster.worker(concurrency=CONCURRENCY, name=f"w{i}") for i in (1, 2)]
    pids = [w.proc.pid for w in workers if w.proc]
    producer = Producer(cluster, list(jobs.values()), per_second=150)
    started = time.monotonic()
    producer.start()
    assert sink.wait_total(KILL_AT, timeout=120), f"only {sink.total()} delivered before the kill"
    delivered_at_kill = sink.total()
    lag_bytes = group.replica_lag_bytes()  # what asynchronous replication had not yet copied, just before
    group.kill_master()
    killed_at = time.monotonic()
    # At most one message per worker process is in flight (prefetch off): anything delivered beyond those
    # was taken from the broker after the kill, through the promoted replica.
    in_flight_bound = len(workers) * CONCURRENCY
    promoted_s = first_new_s = None
    while promoted_s is None or first_new_s is None:
        now = time.monotonic()
        if promoted_s is None and group.promoted():
            promoted_s = now - killed_at
        if first_new_s is None and sink.total() > delivered_at_kill + in_flight_bound:
            first_new_s = now - killed_at
        assert now - killed_at < 120, f"no failover within 120 s (promoted after {promoted_s})"
        time.sleep(0.05)
    producer.join(timeout=120)
    assert not producer.is_alive(), "the producer did not get its jobs through the new master"
    results = cluster.wait_results(list(jobs), timeout=300)
    settled_s = time.monotonic() - killed_at
    counts = outcome_counts(results)
    delivered = sum(1 for job in jobs.values() if sink.accepted[job.to.lower()] >= 1)
    logs = "".join(w.log() for w in workers)
    figures = report(
        "sentinel-failover-2000",
        sent=len(jobs), delivered=delivered, lost=len(jobs) - delivered, duplicated=sink.duplicates(),
        skipped_as_duplicate=counts["duplicate-skipped"], dead_lettered=counts["dead-lettered"],
        without_result=len(jobs) - len(results), delivered_at_kill=delivered_at_kill,
        replica_lag_bytes_before_kill=lag_bytes, failover_s=promoted_s, first_delivery_through_new_master_s=first_new_s,
        producer_retries=producer.retries, producer_stall_s=producer.longest_stall_s,
        republished_by_ledger=logs.count("published again (the broker lost it)"),
        all_ended_after_kill_s=settled_s, elapsed_s=time.monotonic() - started,
    )  # fmt: skip
    # kombu's global key prefix holds through Sentinel: the bindings on the promoted master carry it.
    assert cluster.redis.keys(f"{cluster.prefix}:_kombu.binding.*")
    assert [w.proc.pid for w in workers if w.alive and w.proc] == pids, "a worker died in the failover"
    assert figures["lost"] == 0 and figures["without_result"] == 0
    assert figures["duplicated"] == 0
    # Nothing waits for a claim a failed release left behind (worker/liveness/heartbeat.py Claims), nor for
    # a lease longer than needed: only a job the ledger had to publish again may take its grace (60 s here).
    if figures["republished_by_ledger"] == 0:
        assert settled_s < 60, f"the last job ended {settled_s:.0f} s after the kill"
