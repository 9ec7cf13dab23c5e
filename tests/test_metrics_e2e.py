"""The issue's "done when" for metrics: `/metrics` shows the oldest message's age rising while the workers are
stopped and falling when they start. Real `mailworker worker` processes on a private Redis (the fault
scenarios' Cluster), the real app on uvicorn, a real SMTP server on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.reliability.harness import Cluster
from tests.support.http import serve
from tests.support.smtp_server import SmtpTestServer
from tests.test_metrics import Samples, scrape, value
from worker.http.app import create_app
from worker.http.tokens import TokenStore

QUEUE = "transactional"


@pytest.mark.integration
def test_the_oldest_age_rises_while_workers_are_stopped_and_falls_when_they_start(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    with Cluster.start(tmp_path) as cluster:
        rt = cluster.runtime
        cluster.save_realm("acme", smtp_server.settings_dict())
        token = TokenStore(rt.redis, rt.keys).create("admin", [], "prometheus").token
        server = serve(create_app(rt.settings, rt))
        client = next(server).client(token)
        try:
            worker = cluster.worker()
            first = cluster.enqueue(cluster.job("acme", "password-reset", "first@example.com"))
            assert cluster.wait_results([first], timeout=60)[first]["status"] == "sent"
            assert value(scrape(client), "mailworker_queue_oldest_age_seconds", queue=QUEUE) == 0.0

            worker.terminate()
            ids = cluster.send_many("acme", "password-reset", ["a@example.com", "b@example.com"])
            seen: list[Samples] = []
            for _ in range(3):
                seen.append(scrape(client))
                time.sleep(1.0)
            ages = [value(s, "mailworker_queue_oldest_age_seconds", queue=QUEUE) for s in seen]
            assert [value(s, "mailworker_queue_depth", queue=QUEUE) for s in seen] == [2.0, 2.0, 2.0]
            assert ages[0] < ages[1] < ages[2] and ages[2] >= 2.0, ages

            cluster.worker(name="w2")
            results = cluster.wait_results(ids, timeout=60)
            assert {r["status"] for r in results.values()} == {"sent"}
            cluster.counted()  # the workers write their counts once a second (worker/outcomes/buffer.py)
            after = scrape(client)
            assert value(after, "mailworker_queue_oldest_age_seconds", queue=QUEUE) == 0.0
            assert value(after, "mailworker_queue_depth", queue=QUEUE) == 0.0
            # Enqueue to acceptance: the first went at once, the two others waited out the stop (>2.5 s).
            assert value(after, "mailworker_delivery_seconds_count", queue=QUEUE) == 3.0
            assert value(after, "mailworker_delivery_seconds_bucket", queue=QUEUE, le="2.5") == 1.0
            assert value(after, "mailworker_jobs_total", realm="acme", outcome="sent") == 3.0
        finally:
            server.close()
