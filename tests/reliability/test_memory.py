"""Redis memory: per-message keys (results, delivered-markers, attempt counters, bulk chunks) expire.

100,000 messages through the bulk API (tasks.api.send_bulk, in a producer subprocess with the cluster's
environment) plus 5,000 transactional sends (results, markers, attempts, a few dead letters), with every
TTL at its minimum (60 s). Once the TTLs have passed, the keys left are a handful per realm, not per message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from tests.reliability.harness import ROOT, Cluster, outcome_counts, report
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

BULK = 100_000
TRANSACTIONAL = 5_000
TTL = "60"
# Bulk jobs keep their recipients and progress for the delivered-marker TTL, counted from the start: it must
# outlast the run (production: 7 days).
BULK_TTL = "180"
PRODUCER = """
import json, sys
from tasks import api
n, run = int(sys.argv[1]), sys.argv[2]
job = api.send_bulk("acme", "email-verification", (f"bulk-{run}-{i}@example.com" for i in range(n)),
                    context={"user": {"username": "u", "first_name": "U"}, "link": "https://iam.example.com/v?k=1"})
print(json.dumps(api.wait_for_bulk(job, timeout=900, interval=1.0)))
"""


def family(key: str, prefix: str) -> str:
    """A key's family: the prefix and the first word after it ('mwrel-x:delivered:<id>' -> 'delivered')."""
    if key.startswith("celery-task-meta-"):
        return "celery-task-meta"
    if key.startswith("_kombu.binding."):
        return key
    rest = key.removeprefix(f"{prefix}:")
    return rest.split(":", 1)[0] if rest != key else key


def families(cluster: Cluster) -> Counter[str]:
    return Counter(family(str(k), cluster.prefix) for k in cluster.redis.scan_iter(count=5000))


# Keys written per message: every one of them must be gone once their TTLs ran out. (`alive` is one key per
# worker process, there while it runs: counted in the total, not here.)
PER_MESSAGE_FAMILIES = ("job", "claim", "celery-task-meta", "dead", "cooldown", "pending")


def test_keys_left_after_100000_messages_are_bounded(tmp_path):
    # MAILWORKER_LOST_JOB_GRACE sets how long an ended job's hash stays (twice the grace: an hour by default).
    env = {"MAILWORKER_RESULT_EXPIRES": TTL, "MAILWORKER_DELIVERED_MARKER_TTL": BULK_TTL,
           "MAILWORKER_DEAD_LETTER_TTL": TTL, "MAILWORKER_LOST_JOB_GRACE": TTL}  # fmt: skip
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, **env) as cluster, Sink() as sink:
        cluster.save_realm("acme", sink.settings_dict())
        bad = [f"bad-{run}-{i}@example.com" for i in range(50)]
        for address in bad:
            sink.reject(address)
        cluster.worker(concurrency=2, name="tx")
        cluster.worker(concurrency=2, queues="bulk", name="bulk")
        started = time.monotonic()
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(BULK), run], env=cluster.env(), cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        tx_addresses = [f"tx-{run}-{i}@example.com" for i in range(TRANSACTIONAL - len(bad))] + bad
        ids = cluster.send_many("acme", "password-reset", tx_addresses)
        results = cluster.wait_results(ids, timeout=600)
        out, err = producer.communicate(timeout=900)
        assert producer.returncode == 0, err[-3000:]
        progress = json.loads(out.strip().splitlines()[-1])
        elapsed = time.monotonic() - started
        peak = families(cluster)
        peak_total, peak_memory = cluster.key_count(), cluster.redis.info("memory")["used_memory"]

        deadline = time.monotonic() + 240  # the TTLs, and Redis's lazy + active expiry

        def per_message_keys_left() -> bool:
            left_now = families(cluster)
            return any(left_now.get(name, 0) for name in PER_MESSAGE_FAMILIES)

        while (cluster.key_count() > 60 or per_message_keys_left()) and time.monotonic() < deadline:
            time.sleep(2)
        left = families(cluster)
        left_total, left_memory = cluster.key_count(), cluster.redis.info("memory")["used_memory"]
        without_ttl = sorted(
            str(k) for k in cluster.redis.scan_iter(count=5000) if cluster.redis.ttl(k) == -1
        )
        dead_index = cluster.redis.zcard(f"{cluster.prefix}:dead-letters")

    counts = outcome_counts(results)
    total = BULK + TRANSACTIONAL
    report("redis-memory-100k", sent=total, delivered=sink.total(), bulk_sent=progress.get("sent"),
           tx_delivered=counts["sent"], dead_lettered=counts["dead-lettered"], lost=total - len(bad) - sink.total(),
           duplicated=sink.duplicates(), elapsed_s=elapsed, keys_at_peak=peak_total, used_memory_peak=peak_memory,
           keys_left=left_total, used_memory_left=left_memory, families_left=dict(left), keys_without_ttl=len(without_ttl),
           dead_letter_index_left=dead_index, families_at_peak=dict(peak.most_common(8)))  # fmt: skip
    assert progress.get("sent") == BULK and counts["sent"] == TRANSACTIONAL - len(bad)
    assert counts["dead-lettered"] == len(bad) and sink.duplicates() == 0
    assert sink.total() == total - len(bad)
    assert peak_total > 1000  # the per-message keys were there
    assert left_total <= 60, dict(left)
    for name in PER_MESSAGE_FAMILIES:
        assert left.get(name, 0) == 0, (name, left[name])
    # What never expires is per realm or per queue, not per message.
    assert len(without_ttl) <= 20, without_ttl
    assert dead_index == 0  # the dead-letter index forgets the letters that expired


FLOOD = 50_000


def test_the_footprint_of_a_50000_job_flood_at_default_settings(tmp_path):
    """What a flood leaves behind: keys and bytes per job, and for how long.

    Before: 184,414 keys and 99.8 MB for 50,000 jobs (about 2 KB a job, kept 1 to 7 days). Now: per job,
    its result (read by `status` and waiting producers: a day) and its bookkeeping hash (read only by a late
    copy of the job: an hour after it ended).
    """
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink() as sink:
        cluster.save_realm("acme", sink.settings_dict())
        before_keys, before_memory = cluster.key_count(), cluster.redis.info("memory")["used_memory"]
        cluster.worker(concurrency=2, queues=None)
        started = time.monotonic()
        ids = cluster.send_many(
            "acme", "email-verification", (f"f-{run}-{i}@example.com" for i in range(FLOOD))
        )
        results = cluster.wait_results(ids, timeout=900, poll=5)
        elapsed = time.monotonic() - started
        time.sleep(35)  # cooldown keys (30 s) are gone; what is left stays for its TTL
        after = families(cluster)
        after_keys, after_memory = cluster.key_count(), cluster.redis.info("memory")["used_memory"]
        sample = ids[:: FLOOD // 200]
        result_keys = [f"celery-task-meta-{i}" for i in sample]
        job_keys = [f"{cluster.prefix}:job:{i}" for i in sample]
        result_bytes = sum(cluster.redis.memory_usage(k) or 0 for k in result_keys) / len(sample)
        job_bytes = sum(cluster.redis.memory_usage(k) or 0 for k in job_keys) / len(sample)
        result_ttl = max(cluster.redis.ttl(k) for k in result_keys)
        job_ttl = max(cluster.redis.ttl(k) for k in job_keys)

    report("default-flood-50000", jobs=FLOOD, delivered=sink.total(), duplicated=sink.duplicates(),
           elapsed_s=elapsed, keys_after=after_keys, keys_per_job=(after_keys - before_keys) / FLOOD,
           bytes_per_job=(after_memory - before_memory) / FLOOD, used_memory_mb=after_memory / 2**20,
           result_bytes=result_bytes, result_ttl_s=result_ttl, job_hash_bytes=job_bytes, job_hash_ttl_s=job_ttl,
           kept_for_the_day_mb=result_bytes * FLOOD / 2**20, families=dict(after.most_common(6)))  # fmt: skip
    assert outcome_counts(results)["sent"] == FLOOD and sink.duplicates() == 0
    assert (after_keys - before_keys) / FLOOD <= 2.05, dict(after)  # its result and its job hash
    assert job_ttl <= 3600  # an ended job's bookkeeping: an hour
    assert result_ttl <= 86_400
    # 744 + 496 bytes on the last run: the result names the server that took the mail since SMTP failover,
    # and the delivered record (a JSON value over Redis's 64-byte listpack limit) makes the job hash a
    # hashtable. Bounded so that a field nobody reads does not creep in unnoticed.
    assert result_bytes + job_bytes <= 1300
