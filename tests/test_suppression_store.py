"""The suppression list on the real Redis: one round trip answers for many addresses, expiry, remove."""

from __future__ import annotations

from config.keys import Keys
from worker.bounces.suppression import COMPLAINT, HARD_BOUNCE, SuppressionList


def test_suppressed_expires_lists_newest_first_and_removes(real_redis, key_prefix):
    store = SuppressionList(real_redis, Keys(key_prefix), ttl=100)
    store.add("acme", "Gone@Example.com", HARD_BOUNCE, job_id="j1", status="5.1.1", now=1000.0)
    store.add("acme", "angry@example.com", COMPLAINT, job_id="j2", now=1050.0)
    store.add("other", "free@example.com", HARD_BOUNCE, job_id="j3", now=1000.0)

    assert store.suppressed("acme", ["gone@example.com", "free@example.com", "ANGRY@example.com"], now=1060.0) == [
        True, False, True]  # fmt: skip
    assert store.suppressed("acme", ["gone@example.com", "angry@example.com"], now=1100.0) == [False, True]
    assert store.get("acme", "gone@example.com", now=1100.0) is None
    assert [e.address for e in store.list("acme", now=1060.0)] == ["angry@example.com", "gone@example.com"]
    assert [e.address for e in store.list("acme", now=1120.0)] == [
        "angry@example.com"
    ]  # gone expired: forgotten
    assert store.remove("acme", "Angry@example.com") and not store.remove("acme", "angry@example.com")
    assert store.list("acme", now=1120.0) == [] and store.suppressed("acme", [], now=0) == []
    assert store.get("other", "free@example.com", now=1001.0).job_id == "j3"
