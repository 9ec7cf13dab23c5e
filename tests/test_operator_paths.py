"""What an operator leans on: commands that need no secret key, a job's status as its latest truth, a
requeued bulk dead letter back on the bulk queue. Real Redis, the session's in-thread worker, real SMTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}


def address() -> str:
    return f"op-{uuid.uuid4().hex[:8]}@example.com"


def without_key(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILWORKER_SECRET_KEY"}
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


PRODUCER = """
import json, sys
from tasks import api
job = api.send_email(sys.argv[1], "password-reset", sys.argv[2], idempotency_key=sys.argv[3],
                     context={"user": {"username": "a"}, "link": "https://iam.example.com/r", "link_expiration": 30})
print(job)
"""


def test_commands_and_producers_that_decrypt_nothing_need_no_secret_key(
    celery_worker: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    rt = runtime()
    rt.store.save(realm, smtp_server.settings_dict())
    rt.store.set_draft(realm, {"port": 2525})
    smtp_server.reject_recipient("gone@example.com")
    dead = api.send_email(realm, "password-reset", "gone@example.com", context=CONTEXT)
    assert api.wait_for_result(dead)["status"] == "dead-lettered"
    env = {k: v for k, v in os.environ.items() if k != "MAILWORKER_SECRET_KEY"}

    produced = subprocess.run([sys.executable, "-c", PRODUCER, realm, address(), f"k-{uuid.uuid4().hex}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert produced.returncode == 0, produced.stderr  # an idempotency key needs no key either
    for argv in (["settings", "history", "--realm", realm], ["settings", "revert", "--realm", realm],
                 ["stats", "--json"], ["realms", "--json"], ["status", dead, "--json"],
                 ["dead", "requeue", dead]):  # fmt: skip
        done = without_key(*argv)
        assert done.returncode in (0, 1), (argv, done.stderr)  # status of a dead job: 1, by design
        assert "MAILWORKER_SECRET_KEY" not in done.stderr, (argv, done.stderr)
    assert rt.store.draft(realm) is None  # the revert happened
    assert api.wait_for_result(produced.stdout.strip())["status"] == "sent"


def test_a_job_dropped_then_sent_again_under_its_key_says_sent(
    celery_worker: Any, realm: str, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime()
    rt.store.save(realm, smtp_server.settings_dict())
    monkeypatch.setattr(rt.settings, "recipient_cooldown", 30)
    to, key = address(), f"reset-{uuid.uuid4().hex}"
    first = api.send_email(realm, "password-reset", to, context=CONTEXT)
    assert api.wait_for_result(first)["status"] == "sent"
    dropped = api.send_email(realm, "password-reset", to, context=CONTEXT, idempotency_key=key)
    assert api.wait_for_result(dropped)["status"] == "dropped"

    rt.redis.delete(rt.keys.cooldown(realm, "password-reset", to))  # the cooldown has passed
    again = api.send_email(realm, "password-reset", to, context=CONTEXT, idempotency_key=key)

    assert again == dropped
    assert api.wait_for_result(again)["status"] == "sent"  # not the stale "dropped" of the first run
    status = subprocess.run([sys.executable, "-m", "worker.cli", "status", again, "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (status.returncode, json.loads(status.stdout)["status"]) == (0, "sent")
    assert len(smtp_server.received_for(to)) == 2


def test_a_requeued_bulk_dead_letter_goes_back_to_the_bulk_queue(
    celery_worker: Any, realm: str, smtp_server: SmtpTestServer
) -> None:
    from config.names import BULK, BULK_CHUNK_TASK
    from worker.jobs.deadletters import DeadLetter
    from worker.jobs.model import new_job

    rt = runtime()
    rt.store.save(realm, smtp_server.settings_dict())
    job = new_job(realm, "notice", address(), context={"notice": {"subject": "S", "body": "B"}})
    job = job.model_copy(update={"id": f"bulk-{uuid.uuid4().hex}-7"})
    rt.dead_letters.add(DeadLetter(job_id=job.id, realm=realm, template="notice", to=job.to, reason="exhausted",
                                   error="451 x", attempts=3, task=BULK_CHUNK_TASK,
                                   job=job.model_dump(mode="json")))  # fmt: skip

    api.requeue_dead_letter(job.id)

    entry = json.loads(rt.redis.get(rt.keys.pending_job(job.id)))
    assert entry["queue"] == BULK and entry["task"] == "mail.send"
    assert api.wait_for_result(job.id)["status"] == "sent"  # taken up by a worker of the bulk queue


@pytest.mark.parametrize("key", ["none", "another", "malformed"])
def test_a_worker_refuses_to_start_with_a_key_that_does_not_open_the_stored_secrets(
    realm: str, smtp_server: SmtpTestServer, key: str
) -> None:
    """Started anyway, it would take every job of a realm with a password and fail it."""
    from cryptography.fernet import Fernet

    runtime().store.save(realm, smtp_server.settings_dict(auth=True, username="u", password="pw-kept-secret"))
    env = {k: v for k, v in os.environ.items() if k != "MAILWORKER_SECRET_KEY"}
    env.update({"another": {"MAILWORKER_SECRET_KEY": Fernet.generate_key().decode()},
                "malformed": {"MAILWORKER_SECRET_KEY": "not-a-key"}}.get(key, {}))  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "worker.cli", "worker", "--queues", "control", "--pool", "solo"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "MAILWORKER_SECRET_KEY" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "pw-kept-secret" not in done.stderr + done.stdout


# ---- a malformed service setting: one line, exit 1, from every command ------------------------------------

BAD_SETTINGS = {
    "MAILWORKER_LOG_FORMAT": ("yaml", "MAILWORKER_LOG_FORMAT: "),
    "MAILWORKER_MAX_ATTEMPTS": ("abc", "MAILWORKER_MAX_ATTEMPTS: Input should be a valid integer"),
    "MAILWORKER_VISIBILITY_TIMEOUT": ("100", "MAILWORKER_VISIBILITY_TIMEOUT was removed"),
    "MAILWORKER_MAX_ATTEMPT": ("3", "did you mean MAILWORKER_MAX_ATTEMPTS?"),
}
COMMANDS = [["health"], ["stats"], ["status", "x"], ["dead", "list"], ["realms"], ["job", "list"],
            ["settings", "history", "--realm", "r"], ["ingest", "--once"],
            ["worker", "--queues", "control", "--pool", "solo"]]  # fmt: skip


def with_setting(name: str, value: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, name: value}
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "name, argv",
    [(name, ["health"]) for name in BAD_SETTINGS]
    + [
        (name, argv)
        for name in ("MAILWORKER_MAX_ATTEMPTS", "MAILWORKER_VISIBILITY_TIMEOUT")
        for argv in COMMANDS
    ],
)
def test_a_malformed_or_removed_setting_is_one_line_and_exit_1_from_every_command(
    name: str, argv: list[str]
) -> None:
    value, says = BAD_SETTINGS[name]
    done = with_setting(name, value, argv)
    assert done.returncode == 1, (argv, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr, (
        done.stderr
    )


@pytest.mark.parametrize("job", [{}, {"realm": "acme", "requeued": "many"}, {"to": ["not", "a", "job"]}])
def test_a_dead_letter_that_holds_no_job_cannot_be_requeued_and_says_so(job: dict[str, Any]) -> None:
    """Written by hand or by an older version: one line, not a pydantic traceback."""
    from worker.jobs.deadletters import DeadLetter

    job_id = f"handmade-{uuid.uuid4().hex[:8]}"
    runtime().dead_letters.add(DeadLetter(job_id, "acme", "password-reset", "a@example.com", "permanent",
                                          "550", 1, job=job))  # fmt: skip
    try:
        done = without_key("dead", "requeue", job_id)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip() == (f"error: job_id: dead letter {job_id} holds no job that can be sent "
                                       "again; purge it (`dead purge`)")  # fmt: skip
        assert runtime().dead_letters.get(job_id).job_id == job_id  # kept, for the operator to look at
    finally:
        runtime().dead_letters.remove(job_id)
