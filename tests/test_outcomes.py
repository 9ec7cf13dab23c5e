"""A dead-lettered job reads as a failure in Celery (its state, its events, what Flower shows), and every
reader of results (wait_for_result, `mailworker status`) still gets the job's result dict.

The integration test runs a real `mailworker worker` (events on, as the command starts it) on the
session's Redis under a prefix of its own, an SMTP server on 127.0.0.1 refusing one recipient, and listens
to the worker's events as Flower does.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.outcomes import DeadLettered, dead_letter_result, ended_value, raise_if_dead
from tests.reliability.harness import MAILWORKER, Cluster, ended_result
from tests.support.clusters import session_cluster
from tests.support.smtp_server import SmtpTestServer

DEAD = {"status": "dead-lettered", "job_id": "j1", "reason": "permanent", "error": "rcpt: 550 5.1.1 unknown",
        "smtp_code": 550, "attempts": 1}  # fmt: skip
SENT = {"status": "sent", "job_id": "j2", "smtp_code": 250}


class Unrelated(Exception):
    pass


# What a reader that never imported tasks.outcomes gets back from the backend: a class Celery makes up with
# the same name (celery.utils.serialization.create_exception_cls).
Lookalike = type("DeadLettered", (Exception,), {})


@pytest.mark.parametrize(
    "value, expected",
    [
        (DeadLettered(DEAD), DEAD),
        (Lookalike(DEAD), DEAD),
        (Lookalike("permanent"), None),  # not what DeadLettered carries
        (Lookalike({"status": "sent"}), None),
        (Unrelated(DEAD), None),  # another exception carrying the same: not ours
        (SENT, None),
        (None, None),
    ],
)
def test_dead_letter_result(value: Any, expected: dict[str, Any] | None) -> None:
    assert dead_letter_result(value) == expected


def test_ended_value_gives_the_dict_and_raises_a_real_failure() -> None:
    assert ended_value(DeadLettered(DEAD)) == DEAD
    assert ended_value(SENT) == SENT
    with pytest.raises(Unrelated):
        ended_value(Unrelated("a bug"))


def test_only_a_dead_letter_is_raised() -> None:
    for status in ("sent", "dropped", "duplicate-skipped", "ignored", "rejected"):
        assert raise_if_dead({"status": status}) == {"status": status}
    with pytest.raises(DeadLettered) as raised:
        raise_if_dead(DEAD)
    assert raised.value.result == DEAD
    assert repr(raised.value) == "DeadLettered(permanent: rcpt: 550 5.1.1 unknown)"


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"status": "SUCCESS", "result": SENT}, SENT),
        ({"status": "FAILURE", "result": {"exc_type": "DeadLettered", "exc_message": [DEAD]}}, DEAD),
        ({"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bug"]}}, None),
        ({"status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["in 5s"]}}, None),
    ],
)
def test_the_harness_reads_both_ends_from_raw_meta(meta: dict[str, Any], expected: Any) -> None:
    assert ended_result(meta) == expected


# ---- with a real worker ------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[Cluster]:
    with session_cluster(redis_url, key_prefix, tmp_path) as found:
        yield found


class EventListener(threading.Thread):
    """What Flower does: receive the workers' task events (here, how each task ended)."""

    def __init__(self, app: Any) -> None:
        super().__init__(daemon=True)
        self.app, self.ended = app, {}
        self.listening, self.stopping = threading.Event(), threading.Event()

    def run(self) -> None:
        def ended(event: dict[str, Any]) -> None:
            self.ended[event["uuid"]] = event

        with self.app.connection_for_read() as connection:
            receiver = self.app.events.Receiver(
                connection, handlers={"task-succeeded": ended, "task-failed": ended}
            )
            while not self.stopping.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                        self.listening.set()
                except TimeoutError:  # socket.timeout
                    self.listening.set()  # subscribed: nothing came within the timeout

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


@pytest.mark.integration
def test_a_dead_letter_is_a_failure_in_celery_and_a_sent_job_a_success(cluster: Cluster) -> None:
    with SmtpTestServer() as smtp:
        cluster.save_realm("acme", smtp.settings_dict())
        refused = f"refused-{uuid.uuid4().hex[:8]}@example.com"
        smtp.reject_recipient(refused)
        listener = EventListener(cluster.app)
        listener.start()
        try:
            assert listener.listening.wait(10)
            cluster.worker(concurrency=1, MAILWORKER_TASK_EVENTS="1")  # off by default (worker/app.py)
            sent_id, dead_id = cluster.send_many("acme", "password-reset", ["ok@example.com", refused])
            results = cluster.wait_results([sent_id, dead_id], timeout=30, poll=0.1)
            assert (results[sent_id]["status"], results[dead_id]["status"]) == ("sent", "dead-lettered")
            done = threading.Event()
            while not (sent_id in listener.ended and dead_id in listener.ended) and not done.wait(0.1):
                pass
        finally:
            listener.stop()

    # Celery's own record: the result backend and the events Flower shows.
    assert cluster.app.AsyncResult(sent_id).state == "SUCCESS"
    assert cluster.app.AsyncResult(dead_id).state == "FAILURE"
    assert listener.ended[sent_id]["type"] == "task-succeeded"
    failed = listener.ended[dead_id]
    assert failed["type"] == "task-failed"
    assert failed["exception"].startswith("DeadLettered(permanent: rcpt: 550")

    # The readers of results still get the job's result dict.
    status = subprocess.run([str(MAILWORKER), "status", dead_id, "--json"], env=cluster.env(),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 1, status.stderr  # ended without delivering (docs/cli.md)
    shown = json.loads(status.stdout)
    assert (shown["state"], shown["status"], shown["reason"]) == ("FAILURE", "dead-lettered", "permanent")
    waited = cluster.python(
        "import json, sys\nfrom tasks import api\nprint(json.dumps(api.wait_for_result(sys.argv[1])))",
        dead_id,
    )
    assert json.loads(waited)["reason"] == "permanent"
    # Celery's own line for it (its error quotes the address) is not logged at INFO.
    assert refused not in cluster.workers[0].log()
