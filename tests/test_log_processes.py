"""Logs a pipeline can take, from the real processes: with MAILWORKER_LOG_FORMAT=json every line a process
writes on stdout or stderr is one JSON object, with who wrote it (host, pid, worker), and no recipient.

Each test runs the real command (`mailworker worker`, with and without --queues, `mailworker ingest`) as
tests/reliability/harness.py starts workers, on the session's Redis under a key prefix of its own and an
SMTP server on 127.0.0.1, sends mail through it, stops it with SIGTERM and reads its combined stdout and
stderr.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import MAILWORKER, ROOT, Cluster, WorkerProcess
from tests.support.clusters import session_cluster
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

JSON = {"MAILWORKER_LOG_FORMAT": "json"}
HOST = socket.gethostname()  # what Celery puts for %h in a node name


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[Cluster]:
    """Worker processes on the session's Redis, every key of theirs under a prefix of this test's own."""
    with session_cluster(redis_url, key_prefix, tmp_path) as found:
        yield found


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as server:
        yield server


def records_of(output: str) -> list[dict[str, Any]]:
    """Every line of `output` as a JSON object; fails on the first line that is not one."""
    records = []
    for number, line in enumerate(output.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{output[-3000:]}") from None
        assert isinstance(record, dict), f"line {number} is not an object: {line!r}"
        records.append(record)
    return records


def assert_who_wrote_each(records: list[dict[str, Any]]) -> None:
    for record in records:
        assert record["host"] == HOST and isinstance(record["pid"], int) and record["worker"], record


def attempts(records: list[dict[str, Any]], job_id: str) -> list[tuple[str, str]]:
    return [(r["outcome"], r["level"]) for r in records
            if r["logger"] == "mailworker.delivery" and r["job_id"] == job_id]  # fmt: skip


def unique_address(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}@example.com"


def wait_final(cluster: Cluster, ids: list[str]) -> dict[str, dict[str, Any]]:
    results = cluster.wait_results(ids, timeout=20, poll=0.1)
    assert set(results) == set(ids), results
    return results


def test_the_default_worker_command_writes_only_json_lines(cluster: Cluster, smtp: SmtpTestServer) -> None:
    """`mailworker worker`: the supervisor, both Celery workers and their pool children."""
    cluster.save_realm("acme", smtp.settings_dict())
    argv = [str(MAILWORKER), "worker", "--concurrency", "1", "--bulk-concurrency", "1", "--loglevel", "INFO"]
    worker = WorkerProcess(argv, cluster.env(**JSON), cluster.tmp / "supervisor.log", ready_lines=2)
    cluster.workers.append(worker)
    worker.start(ready_timeout=30)
    to = unique_address("supervised")
    [job_id] = cluster.send_many("acme", "password-reset", [to])
    assert wait_final(cluster, [job_id])[job_id]["status"] == "sent"
    worker.terminate(timeout=20)
    assert worker.proc is not None and worker.proc.returncode == 0

    output = worker.log()
    records = records_of(output)
    assert_who_wrote_each(records)
    assert {r["worker"] for r in records} == {
        "supervisor",
        f"transactional@{HOST}",
        f"bulk@{HOST}",
        f"callbacks@{HOST}",
    }
    assert attempts(records, job_id) == [("sent", "INFO")]
    [sent] = [r for r in records if r.get("job_id") == job_id and r["logger"] == "mailworker.delivery"]
    main_pids = {r["pid"] for r in records if r["msg"].endswith(" ready.")}
    assert sent["pid"] not in main_pids  # a pool child's line, with the fields of its own process
    supervisor = [r["msg"] for r in records if r["worker"] == "supervisor"]
    assert "stopping the workers (SIGTERM)" in supervisor and supervisor[-1] == "workers stopped: exit code 0"
    assert to not in output
    # Celery's own lines go through our formatter; its success line (with the result) does not appear.
    assert any(r["logger"] == "celery.worker.strategy" and job_id in r["msg"] for r in records)
    assert not [r for r in records if r["logger"] == "celery.app.trace" and "succeeded" in r["msg"]]
    # Celery prints its shutdown notice; here it is a record, said by each worker's main process.
    said = {r["worker"] for r in records if r["msg"] == "worker: Warm shutdown (MainProcess)"}
    assert said == {f"transactional@{HOST}", f"bulk@{HOST}", f"callbacks@{HOST}"}


def test_a_single_queue_worker_writes_json_lines_at_the_level_of_each_outcome(
    cluster: Cluster, smtp: SmtpTestServer
) -> None:
    """`mailworker worker --queues`: retry and sent at INFO, a dead letter at WARNING, a realm's settings
    failure at ERROR; no recipient in any line, not even in an error quoting the server's refusal."""
    cluster.save_realm("acme", smtp.settings_dict())
    worker = cluster.worker(concurrency=1, **JSON)
    retried, refused = unique_address("retried"), unique_address("refused")
    smtp.fail_next("451 4.3.0 try again", times=1, at="rcpt")  # quotes the address in the error
    [sent_id] = cluster.send_many("acme", "password-reset", [retried])
    assert wait_final(cluster, [sent_id])[sent_id]["status"] == "sent"
    smtp.reject_recipient(refused)
    [dead_id] = cluster.send_many("acme", "password-reset", [refused])
    [unset_id] = cluster.send_many(f"unset-{uuid.uuid4().hex[:8]}", "password-reset", [retried])
    results = wait_final(cluster, [dead_id, unset_id])
    assert (results[dead_id]["reason"], results[unset_id]["reason"]) == ("permanent", "settings")
    assert refused in results[dead_id]["error"]  # the dead letter keeps the whole error
    worker.terminate(timeout=20)

    output = worker.log()
    records = records_of(output)
    assert_who_wrote_each(records)
    assert {r["worker"] for r in records} == {f"w1-{cluster.prefix}@{HOST}"}
    assert attempts(records, sent_id) == [("retry", "INFO"), ("sent", "INFO")]
    assert attempts(records, dead_id) == [("dead:permanent", "WARNING")]
    assert attempts(records, unset_id) == [("dead:settings", "ERROR")]
    [retry] = [r for r in records if r.get("job_id") == sent_id and r.get("outcome") == "retry"]
    assert "451 ***@example.com: 4.3.0 try again" in retry["error"]
    assert retried not in output and refused not in output
    starting = [r["msg"] for r in records if r["msg"].startswith("worker ") and " starting: " in r["msg"]]
    assert starting == [f"worker w1-{cluster.prefix}@{HOST} starting: queues control,transactional, "
                        "concurrency 1 (prefork)"]  # fmt: skip


def test_mailworker_ingest_writes_only_json_lines(cluster: Cluster, smtp: SmtpTestServer) -> None:
    cluster.save_realm("acme", smtp.settings_dict())
    to = unique_address("ingested")
    entry = {"type": "email", "realm": "acme", "template": "password-reset", "to": to,
             "context": {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1"}}  # fmt: skip
    source = f"{cluster.prefix}:ingest"
    cluster.redis.rpush(source, json.dumps(entry), json.dumps({**entry, "to": None}))
    env = cluster.env(**JSON)
    log_path = cluster.tmp / "ingest.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(MAILWORKER), "ingest", "--block", "0.2"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while log_path.read_text().count("ingest entry") < 2:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cluster.redis.rpush(source, json.dumps(entry))
    once = subprocess.run([str(MAILWORKER), "ingest", "--once"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert once.returncode == 0, once.stderr

    output = log_path.read_text() + once.stdout + once.stderr
    records = records_of(output)
    assert_who_wrote_each(records)
    assert {r["worker"] for r in records} == {"ingest"}
    outcomes = [
        (r["logger"], r["level"], r.get("outcome")) for r in records if r["logger"] == "mailworker.ingest"
    ]
    assert outcomes == [("mailworker.ingest", "INFO", "enqueued"), ("mailworker.ingest", "WARNING", "invalid"),
                        ("mailworker.ingest", "INFO", "enqueued")]  # fmt: skip
    # What --once prints for a person is a record too.
    assert [r["msg"] for r in records if r["logger"] == "mailworker.stdout"] == [
        f"handled 1 ingest entry(ies) from {source}"
    ]
    assert to not in output


CATCH_ALL = """
import sys, threading, warnings
from billiard import util
from config.settings import get_settings
from worker.logs import configure_logging

configure_logging(get_settings(), worker="catch-all", whole_process=True)
print("a library's print")
sys.stderr.write("Exception ignored in: something\\n")
warnings.warn("an old API")
util.get_logger().error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 4242, "signal 9 (SIGKILL)")
thread = threading.Thread(target=lambda: 1 / 0, name="sweeper")
thread.start()
thread.join()
raise RuntimeError("at start-up")
"""


def test_what_a_process_writes_past_logging_is_a_json_record_too() -> None:
    """A print, a raw write to stderr, a warning, billiard's pool logger, uncaught exceptions (a thread's,
    the main one's): each a JSON line of the right level, as in every long-running command's process."""
    env = {**os.environ, **JSON, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CATCH_ALL], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 1  # the uncaught exception still ends the process as a failure
    records = records_of(done.stdout + done.stderr)
    assert_who_wrote_each(records)
    seen = [(r["logger"], r["level"], r["msg"].splitlines()[0]) for r in records]
    assert seen == [
        ("mailworker.stdout", "INFO", "a library's print"),
        ("mailworker.stderr", "ERROR", "Exception ignored in: something"),
        ("py.warnings", "WARNING", "<string>:10: UserWarning: an old API"),
        ("multiprocessing", "ERROR", "Process 'ForkPoolWorker-1' pid:4242 exited with 'signal 9 (SIGKILL)'"),
        ("mailworker", "CRITICAL", "uncaught ZeroDivisionError in thread sweeper"),
        ("mailworker", "CRITICAL", "uncaught RuntimeError"),
    ]
    assert records[-1]["exc"].endswith("RuntimeError: at start-up")
    assert {r["worker"] for r in records} == {"catch-all"}
