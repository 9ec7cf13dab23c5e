"""Short-lived links go first, at DEFAULT settings: a 5-minute password reset enqueued behind 8,000 e-mail
verifications (12-hour links), with a server that takes 100 ms per message, is delivered within 10 s.

Before priority lanes it waited 428 s behind them and was dead-lettered `expired` without being tried.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.harness import CONTEXT, Cluster, report
from tests.reliability.sink import Sink

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

QUEUED = 8_000


def test_a_reset_behind_8000_verifications_is_delivered_within_10s(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    with Cluster.start(tmp_path, defaults=True) as cluster, Sink(per_message_delay=0.1) as sink:
        cluster.save_realm("acme", {"from": "noreply@example.com", "host": "127.0.0.1", "port": sink.port})
        cluster.worker(concurrency=2, queues=None)
        verify = {**CONTEXT, "link_expiration": 12 * 60}
        started = time.monotonic()
        cluster.send_many("acme", "email-verification", (f"v-{run}-{i}@example.com" for i in range(QUEUED)),
                          context=verify)  # fmt: skip
        enqueue_s = time.monotonic() - started
        waiting = cluster.queue_length()
        reset = cluster.job("acme", "password-reset", f"reset-{run}@example.com",
                            context={**CONTEXT, "link_expiration": 5})  # fmt: skip
        cluster.enqueue(reset)
        result = cluster.wait_results([reset.id], timeout=120).get(reset.id, {})
        verifications_before_it = sink.total() - 1
        waiting_after = cluster.queue_length()

    latency = result.get("sent_at", float("inf")) - reset.created_at
    report("default-reset-behind-8000", queued=QUEUED, enqueue_s=enqueue_s, waiting_when_reset_enqueued=waiting,
           reset_status=result.get("status"), reset_latency_s=latency,
           verifications_sent_before_it=verifications_before_it, still_waiting=waiting_after)  # fmt: skip
    assert waiting >= QUEUED * 0.9, "the verifications were not queued: the scenario proves nothing"
    assert result.get("status") == "sent"
    assert latency <= 10
