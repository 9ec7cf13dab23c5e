"""A hanging webhook receiver of one realm delays nobody else's webhooks, nor anyone's mail.

Production layout: a `transactional,control` worker and a `callbacks` worker (`mailworker worker` starts
both), each with its own processes. Realm A's receiver accepts the connection and never answers; realm B's
answers at once. Both realms send password resets before (A healthy) and during A's trouble; we measure
mail latency (job created -> server accepted) for both realms, and B's webhook latency (outcome recorded ->
receiver got the signed request). Then A's receiver recovers and A's webhooks arrive, late but all of them,
each once (deduplicated by webhook-id).

What bounds A's cost (worker/delivery/webhooks.py): at most 2 attempts in flight per endpoint, each under a
10 s deadline, then the endpoint is paused for 30 s and its other deliveries wait without connecting.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import pytest

from tests.reliability.harness import Cluster, outcome_counts, percentile, report
from tests.reliability.sink import Sink
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(400)]

MAIL_CONCURRENCY = 4
CALLBACKS_CONCURRENCY = 4
N = 60
HANG_S = 15.0  # how long A's receiver hangs: past the 10 s deadline of the attempts it holds


def mail_latencies(cluster: Cluster, ids: list[str], created: dict[str, float]) -> tuple[list[float], Any]:
    results = cluster.wait_results(ids, timeout=120)
    return [r["sent_at"] - created[i] for i, r in results.items() if r["status"] == "sent"], results


def burst(cluster: Cluster, realm: str, tag: str) -> tuple[list[str], dict[str, float]]:
    created = {}
    ids = []
    for _ in range(N):
        job = cluster.job(realm, "password-reset", f"{tag}-{uuid.uuid4().hex[:8]}@example.com")
        ids.append(cluster.enqueue(job))
        created[job.id] = job.created_at
    return ids, created


def hook_latencies(receiver: WebhookReceiver, ids: list[str]) -> list[float]:
    wanted = set(ids)
    got = receiver.wait_for(lambda r: r.json["data"].get("job_id") in wanted, count=len(ids), timeout=120)
    first: dict[str, float] = {}
    for request in got:
        data = request.json["data"]
        first.setdefault(data["job_id"], request.at - datetime.datetime.fromisoformat(data["at"]).timestamp())
    return list(first.values())


def test_a_hanging_receiver_delays_no_other_realm(tmp_path: Any) -> None:
    with (
        Cluster.start(tmp_path, MAILWORKER_ALLOW_PRIVATE_URLS="1") as cluster,
        Sink() as sink,
        WebhookReceiver() as hook_a,
        WebhookReceiver() as hook_b,
    ):
        for realm in ("realm-a", "realm-b"):
            cluster.save_realm(realm, sink.settings_dict())
        cluster.runtime.webhooks.add("realm-a", hook_a.url, ["sent"])
        cluster.runtime.webhooks.add("realm-b", hook_b.url, ["sent"])
        cluster.worker(concurrency=MAIL_CONCURRENCY, queues="transactional,control", name="mail")
        cluster.worker(concurrency=CALLBACKS_CONCURRENCY, queues="callbacks", name="callbacks")

        # 1. Both receivers healthy (a warm-up first, so both phases meet warm workers).
        cluster.wait_results(burst(cluster, "realm-b", "warm")[0], timeout=60)
        hook_b.wait_for(lambda r: True, count=N, timeout=60)
        base_a, created_a = burst(cluster, "realm-a", "base-a")
        base_b, created_b = burst(cluster, "realm-b", "base-b")
        base_mail_a, _ = mail_latencies(cluster, base_a, created_a)
        base_mail_b, _ = mail_latencies(cluster, base_b, created_b)
        base_hook_b = hook_latencies(hook_b, base_b)
        hook_latencies(hook_a, base_a)

        # 2. A's receiver hangs: every request to it is held until released.
        hook_a.mode = "hang"
        arrived_before = hook_a.arrivals
        trouble_at = time.time()
        trouble_a, created_ta = burst(cluster, "realm-a", "trouble-a")
        time.sleep(0.5)  # A's webhooks reach the callbacks worker first
        trouble_b, created_tb = burst(cluster, "realm-b", "trouble-b")
        trouble_mail_a, results_a = mail_latencies(cluster, trouble_a, created_ta)
        trouble_mail_b, results_b = mail_latencies(cluster, trouble_b, created_tb)
        trouble_hook_b = hook_latencies(hook_b, trouble_b)
        # ... and past A's deadline (10 s): its held attempts time out, the endpoint is paused.
        time.sleep(max(0.0, trouble_at + HANG_S - time.time()))
        paused_b, created_pb = burst(cluster, "realm-b", "paused-b")
        paused_mail_b, _ = mail_latencies(cluster, paused_b, created_pb)
        paused_hook_b = hook_latencies(hook_b, paused_b)
        held_a = hook_a.arrivals - arrived_before

        # 3. A recovers: its webhooks arrive after the pause and the backoff, each job's once.
        hook_a.mode = "ok"
        hook_a.release.set()
        mine = set(trouble_a)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            recovered = hook_a.received(lambda r: r.json["data"].get("job_id") in mine and r.status == 204)
            trouble_ids = {r.headers["webhook-id"] for r in recovered}
            if len(trouble_ids) >= N:
                break
            time.sleep(0.2)
        recovered_after = max(r.at for r in recovered) - trouble_at
        a_requests = len(hook_a.received(lambda r: r.json["data"].get("job_id") in set(trouble_a)))

    figures = report(
        "webhooks-hanging-receiver",
        jobs_per_realm_phase=N,
        mail_p99_base_a_s=percentile(base_mail_a, 99), mail_p99_base_b_s=percentile(base_mail_b, 99),
        mail_p99_trouble_a_s=percentile(trouble_mail_a, 99), mail_p99_trouble_b_s=percentile(trouble_mail_b, 99),
        hook_b_p50_base_s=percentile(base_hook_b, 50), hook_b_p99_base_s=percentile(base_hook_b, 99),
        hook_b_p50_trouble_s=percentile(trouble_hook_b, 50), hook_b_p99_trouble_s=percentile(trouble_hook_b, 99),
        mail_p99_paused_b_s=percentile(paused_mail_b, 99),
        hook_b_p50_paused_s=percentile(paused_hook_b, 50), hook_b_p99_paused_s=percentile(paused_hook_b, 99),
        a_requests_while_hanging=held_a, a_requests_total=a_requests, a_distinct_webhook_ids=len(trouble_ids),
        a_all_delivered_after_s=recovered_after,
    )  # fmt: skip
    assert outcome_counts(results_a)["sent"] == N and outcome_counts(results_b)["sent"] == N
    # Mail does not notice: both realms' p99 stay within the noise of the healthy phase.
    assert figures["mail_p99_trouble_a_s"] <= 2 * figures["mail_p99_base_a_s"] + 0.5
    assert figures["mail_p99_trouble_b_s"] <= 2 * figures["mail_p99_base_b_s"] + 0.5
    # B's webhooks do not wait for A's deadline (10 s): a hanging endpoint holds at most 2 processes.
    assert figures["mail_p99_paused_b_s"] <= 2 * figures["mail_p99_base_b_s"] + 0.5
    assert figures["hook_b_p99_trouble_s"] <= 2 * figures["hook_b_p99_base_s"] + 1.0
    assert figures["hook_b_p99_paused_s"] <= 2 * figures["hook_b_p99_base_s"] + 1.0
    # A's hang cost the attempts in its 2 slots, not one per webhook: the rest waited for a slot, then
    # out the pause, without connecting.
    assert 1 <= held_a <= 2
    # Once it answers, every one of A's webhooks arrives. At least once: a request held past our deadline
    # that the receiver then processed comes again, with the same webhook-id (the receiver dedupes by it).
    assert len(trouble_ids) == N and a_requests <= N + held_a
