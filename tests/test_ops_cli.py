"""`mailworker status|stats|health` against the session's real Redis and its running in-thread worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import api
from tasks.stats import queue_depths
from tests.support.smtp_server import SmtpTestServer, closed_port
from worker.cli import main
from worker.runtime import runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/verify?k=1", "link_expiration": 30}


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Any:
    return celery_worker


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


def sent_and_dead(realm: str, server: SmtpTestServer) -> tuple[dict[str, Any], dict[str, Any]]:
    runtime().store.save(realm, server.settings_dict())
    sent = api.wait_for_result(api.send_email(realm, "email-verification", address(), context=CONTEXT))
    to = address()
    server.reject_recipient(to, f"550 5.1.1 <{to}>: mailbox unavailable")
    dead = api.wait_for_result(api.send_email(realm, "email-verification", to, context=CONTEXT))
    assert (sent["status"], dead["status"]) == ("sent", "dead-lettered")
    return sent, dead


def test_status_of_a_sent_and_a_dead_lettered_job(
    capsys: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    sent, dead = sent_and_dead(realm, smtp_server)

    code, out, err = run(capsys, "status", sent["job_id"], "--json")
    info = json.loads(out)
    assert (code, err) == (0, "")
    assert info["state"] == "SUCCESS" and info["status"] == "sent" and info["attempts"] == 1
    assert info["message_id"] == sent["message_id"] and info["task"] == "mail.send"
    assert "error" not in info
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["sent_at"])  # ISO 8601 UTC

    code, out, err = run(capsys, "status", dead["job_id"], "--json")
    info = json.loads(out)
    assert (code, err) == (1, "")  # ended without delivery: a script sees it in the exit code
    assert info["status"] == "dead-lettered" and info["reason"] == "permanent" and info["attempts"] == 1
    assert info["smtp_code"] == 550 and "mailbox unavailable" in info["error"] and info["realm"] == realm

    code, out, _ = run(capsys, "status", dead["job_id"])
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 1 and lines["status"] == "dead-lettered" and "mailbox unavailable" in lines["error"]
    assert "context" not in out and CONTEXT["link"] not in out  # no personal data from the job


def test_status_of_an_unknown_job_says_so_with_exit_code_3(capsys: Any) -> None:
    code, out, _ = run(capsys, "status", f"no-such-{uuid.uuid4().hex}", "--json")
    info = json.loads(out)
    assert code == 3 and info["state"] == "PENDING" and info["attempts"] == 0
    assert info["status"].startswith("unknown: no such job")


def test_stats_counts_waiting_messages_of_every_priority_under_the_broker_prefix(key_prefix: str) -> None:
    """Queue depths read what kombu wrote: its key prefix and its priority-suffixed lists included."""
    from kombu import Connection

    settings = runtime().settings.model_copy(update={"broker_key_prefix": f"{key_prefix}:"})
    transport = {"global_keyprefix": settings.broker_key_prefix}
    with Connection(settings.broker_url, transport_options=transport) as conn:
        transactional = conn.SimpleQueue("transactional")
        for n in range(3):
            transactional.put({"n": n})
        transactional.put({"urgent": True}, priority=9)  # kombu: a list of its own, "<queue>\x06\x169"
        conn.SimpleQueue("bulk").put({"n": 0})
        taken = conn.SimpleQueue("control")
        taken.put({"n": 0})
        taken.get(timeout=5)  # taken, not acknowledged: counted as unacked, no longer waiting

        depths = queue_depths(settings)

        assert depths == {
            "queues": {"transactional": 4, "bulk": 1, "control": 0, "callbacks": 0},
            "unacked": 1,
        }
        assert runtime().redis.llen(f"{key_prefix}:transactional") == 3  # the prefix is really in the key


def test_stats_shows_dead_letters_and_last_hour_counts_per_realm(
    capsys: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    sent_and_dead(realm, smtp_server)

    code, out, err = run(capsys, "stats", "--json")
    data = json.loads(out)
    assert (code, err) == (0, "")
    assert data["last_hour"][realm] == {"sent": 1, "dead": 1, "dropped_cooldown": 0}
    assert data["dead_letters"] >= 1 and data["dead_letters"] == runtime().dead_letters.count()
    assert set(data["queues"]) == {"transactional", "bulk", "control", "callbacks"}
    assert all(isinstance(n, int) and n >= 0 for n in data["queues"].values())

    code, out, _ = run(capsys, "stats")
    [row] = [line.split() for line in out.splitlines() if line.startswith(realm)]
    header = next(line.split() for line in out.splitlines() if line.startswith("REALM"))
    assert header[:4] == ["REALM", "SENT", "DEAD", "DROPPED_COOLDOWN"]  # then what other realms counted
    assert code == 0 and row[:4] == [realm, "1", "1", "0"] and set(row[4:]) <= {"0"}
    assert "QUEUE" in out and "dead letters:" in out


def test_health_is_0_when_redis_the_settings_and_the_worker_answer(
    capsys: Any, celery_worker: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    code, out, err = run(capsys, "health", "--timeout", "5", "--node", celery_worker.hostname)
    assert (code, err) == (0, "")
    rows = [line.split()[:2] for line in out.splitlines()]
    assert rows[:3] == [["ok", "store"], ["ok", "settings"], ["ok", "secrets"]]
    # This machine's Redis keeps nothing on disk: said, but not a failure (many run it so on purpose).
    assert rows[3] in (["ok", "persistence"], ["warn", "persistence"])
    assert rows[4] in (["ok", "memory"], ["warn", "memory"])  # how full this machine's Redis is
    assert rows[5:] == [["ok", "broker"], ["ok", "workers"]]
    assert celery_worker.hostname in out.splitlines()[6]

    code, out, _ = run(capsys, "health", "--timeout", "5")  # without --node: every queue must be served
    queues = [line.split()[:3] for line in out.splitlines() if line.split()[1] == "queue"]
    assert code == 0 and queues == [["ok", "queue", "transactional:"], ["ok", "queue", "bulk:"],
                                    ["ok", "queue", "control:"], ["ok", "queue", "callbacks:"]]  # fmt: skip


def test_health_is_1_when_the_named_worker_is_not_alive(capsys: Any, celery_worker: Any) -> None:
    code, out, _ = run(capsys, "health", "--timeout", "0.5", "--node", "transactional@no-such-host")
    assert code == 1
    assert out.splitlines()[-1].startswith("FAIL  workers: transactional@no-such-host not alive")


def test_health_is_1_when_redis_does_not_answer() -> None:
    """As a container probe runs it: the real command, in its own process, against a closed port."""
    dead = f"redis://:probe-secret-pw@127.0.0.1:{closed_port()}/0"
    env = {**os.environ, "MAILWORKER_STORE_URL": dead, "MAILWORKER_BROKER_URL": dead,
           "MAILWORKER_RESULT_BACKEND": dead}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "health", "--timeout", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["FAIL", "store"],
        ["FAIL", "broker"],
        ["FAIL", "workers"],
    ]
    assert "MAILWORKER_STORE_URL" in lines[0] and "MAILWORKER_BROKER_URL" in lines[1]
    assert "probe-secret-pw" not in done.stdout + done.stderr  # the URL's password is masked


def test_monitoring_commands_need_no_secret_key(realm: str, smtp_server: SmtpTestServer) -> None:
    """A probe or an operator's shell without MAILWORKER_SECRET_KEY still sees the deployment."""
    sent, _ = sent_and_dead(realm, smtp_server)
    env = {name: value for name, value in os.environ.items() if name != "MAILWORKER_SECRET_KEY"}
    for argv in (["stats", "--json"], ["status", sent["job_id"], "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stderr) == (0, ""), argv
        assert json.loads(done.stdout)
    assert json.loads(done.stdout)["status"] == "sent"


def test_status_of_a_retrying_job_says_why(realm: str, smtp_server: SmtpTestServer) -> None:
    import time

    from tasks.status import job_status

    runtime().store.save(realm, smtp_server.settings_dict())
    smtp_server.fail_next("451 4.3.0 greylisted, try again later", times=3)
    job_id = api.send_email(realm, "email-verification", address(),
                            context={"user": {"username": "u"}, "link": "https://x.example/v"})  # fmt: skip
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "last_error" not in seen:
        seen = job_status(job_id)
        time.sleep(0.01)
    assert "greylisted" in seen.get("last_error", ""), seen
    assert api.wait_for_result(job_id)["status"] == "sent"
