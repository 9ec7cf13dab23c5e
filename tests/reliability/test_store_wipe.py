"""A Redis restarted empty (no persistence, the default of many installations), at DEFAULT settings.

What such a restart loses cannot be brought back by the service: the queued jobs, their results and every
realm's settings. What must hold instead is that nobody is told a lie: the worker warns at start that the
Redis keeps nothing on disk and logs the wipe when it sees it, `mailworker health` fails naming the wipe,
and a producer gets a retryable StoreUnavailable, never InvalidInput ("no such realm", which an IAM server
would not retry). Once an admin saves the realm again, mail flows again.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import CONTEXT, MAILWORKER, ROOT, Cluster, report
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

PRODUCER = """
from tasks import api
from config.errors import InvalidInput, StoreUnavailable
try:
    api.send_email("acme", "password-reset", "after-wipe@example.com", context={
        "user": {"username": "a"}, "link": "https://iam.example.com/r", "link_expiration": 5})
    print("enqueued")
except StoreUnavailable as error:
    print("StoreUnavailable:", error)
except InvalidInput as error:
    print("InvalidInput:", error)
"""


def health(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MAILWORKER), "health", "--timeout", "3"], env=cluster.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_redis_restarted_empty_is_noticed_reported_and_retryable(tmp_path: Path) -> None:
    settings = {"from": "noreply@example.com", "host": "127.0.0.1"}
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink(per_message_delay=0.5) as sink:
        cluster.save_realm("acme", {**settings, "port": sink.port})
        worker = cluster.worker(concurrency=2, queues=None)
        before = health(cluster)
        run = uuid.uuid4().hex[:6]
        jobs = [
            cluster.job("acme", "password-reset", f"w-{run}-{i}@example.com", context=CONTEXT)
            for i in range(20)
        ]
        for job in jobs:
            cluster.enqueue(job)
        assert sink.wait_total(4, timeout=60)
        cluster.server.stop()  # no AOF, no snapshot: it comes back empty
        cluster.server.start()
        wiped_at = time.monotonic()
        producer = cluster.python(PRODUCER).strip()
        deadline = time.monotonic() + 45  # a worker notices at its next sweep (every 30 s) or settings read
        while not cluster.redis.exists(f"{cluster.prefix}:wiped") and time.monotonic() < deadline:
            time.sleep(1)
        noticed_s = time.monotonic() - wiped_at
        after = health(cluster)
        time.sleep(2)
        delivered_at_wipe = sink.total()
        cluster.save_realm("acme", {**settings, "port": sink.port})  # an admin restores the realm
        restored = cluster.python(PRODUCER).strip()
        assert sink.wait_total(delivered_at_wipe + 1, timeout=60)
        healed = health(cluster)
        log = worker.log()

    lost = sum(1 for job in jobs if sink.accepted[job.to.lower()] == 0)
    report("default-redis-wiped", queued=len(jobs), delivered_before_wipe=delivered_at_wipe,
           lost_in_the_wipe=lost, wipe_noticed_after_s=noticed_s, producer_after_wipe=producer.split(":")[0],
           health_after_wipe=after.returncode, health_after_restore=healed.returncode)  # fmt: skip
    assert "keeps nothing on disk" in log, "the worker did not warn about a Redis without persistence"
    assert before.returncode == 0 or "persistence" in before.stdout, before.stdout
    # Retryable, and saying what may have happened (whether a worker noticed the wipe yet or not).
    assert producer.startswith("StoreUnavailable:") and ("wiped" in producer or "lost its data" in producer)
    assert after.returncode == 1, after.stdout
    failing = [line for line in after.stdout.splitlines() if line.startswith("FAIL")]
    assert any("settings" in line and "wiped" in line for line in failing), after.stdout
    assert "the config store was wiped" in log
    assert restored == "enqueued"
    assert healed.returncode == 0, healed.stdout
    assert any(line.startswith("warn") and "wiped before" in line for line in healed.stdout.splitlines())
    assert os.path.exists(cluster.server.directory)  # (the scenario's Redis kept nothing there)
