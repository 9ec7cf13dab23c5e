"""Nothing orphaned, nothing expired waiting, at DEFAULT settings.

- `mailworker ingest` killed (SIGKILL) 16 times at random moments while 300 plain-JSON entries stream in:
  every entry becomes exactly one mail (a re-processed entry keeps its job id), and nothing is left in
  the pending-job ledger that the sweeper would publish later behind anyone's back.
- The provider answers 451 to everything for 10.5 minutes (past the old horizon of 8 attempts, ~10 min):
  every verification is delivered once the provider is back, and resets whose 30-minute link outlives
  the outage too. Long: `make reliability` only.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import CONTEXT, MAILWORKER, ROOT, Cluster, outcome_counts, report
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability]


@pytest.mark.timeout(600)
def test_an_ingest_consumer_killed_16_times_leaves_no_orphan_and_no_second_copy(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    rng = random.Random(16)
    to = [f"in-{run}-{i}@example.com" for i in range(300)]
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink() as sink:
        cluster.save_realm("acme", {"from": "noreply@example.com", "host": "127.0.0.1", "port": sink.port})
        cluster.worker(concurrency=2, queues=None)
        source = f"{cluster.prefix}:ingest"
        log = (tmp_path / "ingest.log").open("ab")

        def consumer() -> subprocess.Popen[bytes]:
            return subprocess.Popen([str(MAILWORKER), "ingest"], env=cluster.env(), cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)  # fmt: skip

        proc = consumer()
        kills = 0
        for start in range(0, len(to), 15):  # 20 batches, a kill in each of the first 16
            batch = to[start : start + 15]
            for address in batch:
                entry = {"realm": "acme", "template": "email-verification", "to": address, "context": CONTEXT}
                cluster.redis.rpush(source, json.dumps(entry))
            if kills < 16:
                # Once the (re)started consumer is at work on this batch, somewhere in the middle of it. (Two
                # deaths on one entry would dead-letter it on purpose: a poison pill, issue "no input wedges".)
                deadline = time.monotonic() + 20
                while cluster.redis.llen(source) >= len(batch) and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.03))
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kills += 1
                proc = consumer()
        deadline = time.monotonic() + 180
        while sink.total() < len(to) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # let a late second copy show up, if there were one
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        pending = cluster.redis.zcard(f"{cluster.prefix}:pending")
        left_in_source = cluster.redis.llen(source)
        processing = sum(
            cluster.redis.llen(k) for k in cluster.redis.scan_iter(f"{cluster.prefix}:ingest:processing:*")
        )
        dead = cluster.runtime.dead_letters.count()

    copies = [sink.accepted[a] for a in to]
    report("default-ingest-killed-16x", entries=len(to), kills=kills, delivered=sum(1 for n in copies if n >= 1),
           lost=sum(1 for n in copies if n == 0), duplicated=sum(1 for n in copies if n > 1),
           pending_left=pending, processing_left=processing, dead_letters=dead)  # fmt: skip
    assert kills == 16
    assert copies == [1] * len(to), "an entry was lost or sent twice"
    assert pending == 0, "a pending-ledger entry was left behind (the sweeper would publish it later)"
    assert left_in_source == 0 and processing == 0 and dead == 0


@pytest.mark.timeout(1800)
def test_a_10_minute_provider_outage_is_outlived_by_the_retries(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    outage_s = 630
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink() as sink:
        cluster.save_realm("acme", {"from": "noreply@example.com", "host": "127.0.0.1", "port": sink.port})
        cluster.worker(concurrency=2, queues=None)
        sink.tempfail_until = time.monotonic() + outage_s
        started = time.monotonic()
        verifications = cluster.send_many("acme", "email-verification",
                                          [f"v-{run}-{i}@example.com" for i in range(100)],
                                          context={**CONTEXT, "link_expiration": 12 * 60})  # fmt: skip
        resets = cluster.send_many("acme", "password-reset", [f"r-{run}-{i}@example.com" for i in range(10)],
                                   context={**CONTEXT, "link_expiration": 30})  # fmt: skip
        ids = verifications + resets
        results = cluster.wait_results(ids, timeout=outage_s + 700)
        elapsed = time.monotonic() - started
        tempfails = sink.counters["tempfail"]

    counts = outcome_counts(results)
    after_outage = [r["sent_at"] for r in results.values() if r["status"] == "sent"]
    report("default-451-outage-630s", jobs=len(ids), outage_s=outage_s, tempfail_replies=tempfails,
           outcomes=dict(counts), duplicated=sink.duplicates(), elapsed_s=elapsed,
           last_delivered_after_outage_s=(max(after_outage) - (time.time() - elapsed + outage_s))
           if after_outage else None,
           max_attempts=max((int(r.get("attempts") or 0) for r in results.values()), default=0))  # fmt: skip
    assert tempfails >= len(ids), "the outage did not happen"
    assert counts["sent"] == len(ids), counts  # nothing 'exhausted' or 'expired'
    assert sink.duplicates() == 0
