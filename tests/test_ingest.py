"""Producers in other languages: plain JSON pushed onto a Redis list, moved into Celery by `mailworker ingest`.

The producers here are real non-Python clients (redis-cli from the shell example, the Java example) and a
plain redis-py client in a process that never imports Celery; the session's worker delivers to a real SMTP
server. Each test has its own ingest list (its own key prefix); jobs go to the session's broker and store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from kombu.exceptions import OperationalError

from config.errors import StoreUnavailable
from config.keys import Keys
from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.ingest import (
    DIED_TWICE,
    MAX_ENTRY_BYTES,
    RAW_KEPT,
    IngestConsumer,
    enqueue,
    ingest_client,
)
from worker.jobs.model import MAX_JSON_DEPTH, job_id_for
from worker.runtime import runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LINK = "https://iam.example.com/reset?key=abc"


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Any:
    return celery_worker


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
def consumer(keys: Keys, redis_url: str) -> Iterator[IngestConsumer]:
    client = ingest_client(redis_url, block=0.2)
    yield IngestConsumer(client, keys, runtime().dead_letters, name=f"t-{uuid.uuid4().hex[:6]}")
    client.close()


@pytest.fixture
def saved_realm(realm: str, smtp_server: SmtpTestServer) -> str:
    runtime().store.save(realm, smtp_server.settings_dict())
    return realm


@pytest.fixture
def running(consumer: IngestConsumer) -> Iterator[IngestConsumer]:
    """The consumer's loop in a thread, as `mailworker ingest` runs it; stopped after the test."""
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"block": 0.2}, daemon=True)
    thread.start()
    yield consumer
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


def entry(realm: str, to: str, **extra: Any) -> dict[str, Any]:
    return {"type": "email", "realm": realm, "template": "password-reset", "to": to, "locale": "en",
            "context": {"user": {"username": "alice"}, "link": LINK, "link_expiration": 5}, **extra}  # fmt: skip


def invalid_letters(raw: str, reason: str = "invalid") -> list[Any]:
    return [lt for lt in runtime().dead_letters.list(reason=reason, limit=10_000)
            if lt.job.get("ingest_entry") == raw[:RAW_KEPT]]  # fmt: skip


def deep(levels: int) -> Any:
    """JSON arrays `levels` deep, as a producer's JSON holds them: 300 levels are 600 bytes."""
    return json.loads("[" * levels + "]" * levels)


def restarted(consumer: IngestConsumer, enqueue: Any = enqueue) -> IngestConsumer:
    """A new consumer of the same name: what `mailworker ingest --name ...` is when it starts again."""
    return IngestConsumer(consumer.redis, consumer.keys, consumer.dead, name=consumer.name, enqueue=enqueue)


# What the process runs instead of enqueue: SIGKILL (an OOM kill, a segfault) before or after enqueueing.
KILLED = {
    "before-enqueue": "lambda entry, token: os.kill(os.getpid(), signal.SIGKILL)",
    "after-enqueue": "lambda entry, token: (enqueue(entry, token), os.kill(os.getpid(), signal.SIGKILL))",
}


def killed_while_handling(consumer: IngestConsumer, redis_url: str, when: str) -> None:
    """A consumer process of the same name takes up its entries and is killed with one in hand."""
    code = f"""
import os, signal
from config.keys import Keys
from worker.ingest import IngestConsumer, enqueue, ingest_client
from worker.runtime import runtime
IngestConsumer(ingest_client({redis_url!r}, 0.2), Keys({consumer.keys.prefix!r}), runtime().dead_letters,
               name={consumer.name!r}, enqueue={KILLED[when]}).drain()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert consumer.redis.llen(consumer.processing) == 1


def in_hand(consumer: IngestConsumer) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in consumer.redis.hgetall(consumer.in_hand).items()}


def nothing_in_hand(consumer: IngestConsumer) -> bool:
    return not any(
        consumer.redis.exists(key) for key in (consumer.source, consumer.processing, consumer.in_hand)
    )


def wait_empty(client: Any, *lists: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(client.llen(name) for name in lists):
        assert time.monotonic() < deadline, f"{lists} not emptied within {timeout}s"
        time.sleep(0.05)


# ---- producers in other languages ---------------------------------------------------------------------


@pytest.mark.skipif(not (shutil.which("redis-cli") and shutil.which("jq")), reason="needs redis-cli and jq")
def test_a_job_pushed_with_redis_cli_is_delivered(
    running: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, redis_url: str, key_prefix: str
) -> None:
    to = address()
    env = {**os.environ, "REDIS_URL": redis_url, "MAILWORKER_KEY_PREFIX": key_prefix}
    done = subprocess.run(
        [str(EXAMPLES / "shell" / "enqueue-password-reset.sh"), saved_realm, to, LINK, "reset-1"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    result = api.wait_for_result(job_id_for(saved_realm, "reset-1"))
    assert result["status"] == "sent"
    [received] = smtp_server.received_for(to)
    assert LINK in received.message.get_body(("plain",)).get_content()
    wait_empty(running.redis, running.source, running.processing)


@pytest.mark.skipif(not shutil.which("java"), reason="needs a Java 17+ runtime")
def test_a_job_pushed_from_java_is_delivered(
    running: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, redis_url: str
) -> None:
    to = address()
    url = redis_py.connection.parse_url(redis_url)
    done = subprocess.run(
        ["java", str(EXAMPLES / "java" / "EnqueueEmail.java"), url.get("host", "127.0.0.1"),
         str(url.get("port", 6379)), running.source, saved_realm, to, LINK, "reset-java"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    assert api.wait_for_result(job_id_for(saved_realm, "reset-java"))["status"] == "sent"
    assert len(smtp_server.received_for(to)) == 1


def test_a_plain_redis_client_without_celery_enqueues_an_email_and_an_event(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, redis_url: str
) -> None:
    to, notified = address(), address()
    event = {"type": "UPDATE_PASSWORD", "ipAddress": "198.51.100.4", "user": {"email": notified}}
    producer = f"""
import json, sys, redis
client = redis.Redis.from_url({redis_url!r})
client.rpush({consumer.source!r}, json.dumps({entry(saved_realm, to, idempotency_key="plain-1")!r}))
client.rpush({consumer.source!r}, json.dumps({{"type": "event", "realm": {saved_realm!r}, "event": {event!r}}}))
assert not any(name.split(".")[0] in ("celery", "kombu") for name in sys.modules), "imported Celery"
"""
    done = subprocess.run([sys.executable, "-c", producer], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    assert consumer.drain() == 2
    assert api.wait_for_result(job_id_for(saved_realm, "plain-1"))["status"] == "sent"
    smtp_server.wait_for(2)
    assert len(smtp_server.received_for(to)) == 1 and len(smtp_server.received_for(notified)) == 1
    assert consumer.redis.llen(consumer.source) == 0 and consumer.redis.llen(consumer.processing) == 0


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="needs redis-cli")
def test_the_mailworker_ingest_command_consumes_the_list(
    saved_realm: str, smtp_server: SmtpTestServer, redis_url: str
) -> None:
    """The real command, on the session's own ingest list (`<MAILWORKER_KEY_PREFIX>:ingest`)."""
    to = address()
    source = runtime().keys.ingest()
    line = json.dumps(entry(saved_realm, to, idempotency_key="cli-1"))
    subprocess.run(["redis-cli", "-u", redis_url, "RPUSH", source, line], check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "ingest", "--once"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"handled 1 ingest entry(ies) from {source}\n"
    assert api.wait_for_result(job_id_for(saved_realm, "cli-1"))["status"] == "sent"
    assert len(smtp_server.received_for(to)) == 1


def test_the_python_producer_example_delivers(saved_realm: str, smtp_server: SmtpTestServer) -> None:
    to = address()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "python" / "enqueue.py"), saved_realm, to, LINK],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith(" sent")
    smtp_server.wait_for(2)  # the password reset and the UPDATE_PASSWORD notice


# ---- invalid entries become dead letters; the consumer goes on ----------------------------------------


INVALID = {
    "not-json": ("{not json", "entry: is not JSON"),
    "array": ('["password-reset", "a@example.com"]', "entry: must be a JSON object"),
    "unknown-type": (json.dumps({"type": "sms", "realm": "REALM", "to": "a@example.com"}), "type: must be"),
    "unknown-field": (json.dumps({**entry("REALM", "a@example.com"), "subject": "x"}), "subject: is not a field"),
    "missing-to": (json.dumps({"realm": "REALM", "template": "password-reset"}), "to: is required"),
    "bad-address": (json.dumps(entry("REALM", "not an address")), "to: not a valid address"),
    "header-injection": (json.dumps(entry("REALM", "a@example.com\r\nBcc: eve@evil.example")), "to: must not contain CR"),
    "unknown-template": (json.dumps(entry("REALM", "a@example.com", template="no-such")), "template: unknown template"),
    "javascript-link": (json.dumps({**entry("REALM", "a@example.com"), "context": {"link": "javascript:alert(1)"}}),
                        "context.link: must be an http(s) URL"),
    "unknown-realm": (json.dumps(entry("no-such-realm-x1", "a@example.com")), "no saved SMTP settings"),
    "event-without-type": (json.dumps({"type": "event", "realm": "REALM", "event": {"user": {}}}), "event.type: is required"),
    "too-big": ("x" * (MAX_ENTRY_BYTES + 1), f"entry: is {MAX_ENTRY_BYTES + 1} bytes"),
    # Each of these stopped the consumer for good, and again at each start (RecursionError in json.loads,
    # OverflowError in the job's expiry, pydantic's "Maximum serialization depth exceeded"):
    "deeper-than-json-reads": ('{"realm": "REALM", "template": "password-reset", "to": "a@example.com", "context": {"a": '
                               + "[" * 100_000 + "]" * 100_000 + "}}", "entry: is nested too deeply"),
    "400-digit-link-expiration": (json.dumps({**entry("REALM", "a@example.com"), "context": {"link": LINK, "link_expiration": 10**400}}),
                                  "context.link_expiration: must be a number of minutes from 1 to 10080"),
    "context-300-deep": (json.dumps({**entry("REALM", "a@example.com"), "context": {"link": LINK, "user": deep(300)}}),
                         f"context: is nested deeper than {MAX_JSON_DEPTH} levels"),
    "event-300-deep": (json.dumps({"type": "event", "realm": "REALM", "event": {"type": "UPDATE_PASSWORD",
                                   "user": {"email": "a@example.com"}, "details": {"x": deep(300)}}}),
                       f"event: is nested deeper than {MAX_JSON_DEPTH} levels"),
    "locale-250KB": (json.dumps(entry("REALM", "a@example.com", locale="en-" + "-".join(["abcdefgh"] * 28_000))),
                     "locale: must be a language tag"),
}  # fmt: skip


@pytest.mark.parametrize("raw, field", list(INVALID.values()), ids=list(INVALID))
def test_an_invalid_entry_becomes_a_dead_letter_and_the_next_is_delivered(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, raw: str, field: str
) -> None:
    raw = raw.replace("REALM", saved_realm)
    to = address()
    consumer.redis.rpush(consumer.source, raw, json.dumps(entry(saved_realm, to, idempotency_key=to)))

    assert consumer.drain() == 2

    [letter] = invalid_letters(raw)
    assert letter.task == "ingest" and letter.attempts == 0 and field in letter.error
    assert "\n" not in letter.error
    assert len(letter.job["ingest_entry"]) <= RAW_KEPT
    assert api.wait_for_result(job_id_for(saved_realm, to))["status"] == "sent"
    assert nothing_in_hand(consumer)


def test_bytes_that_are_not_utf8_become_a_dead_letter(consumer: IngestConsumer) -> None:
    consumer.redis.rpush(consumer.source, b'{"realm": "\xff\xfe"}')
    assert consumer.drain() == 1
    letters = [lt for lt in runtime().dead_letters.list(reason="invalid", limit=10_000)
               if lt.job["ingest_entry"] == '{"realm": "\ufffd\ufffd"}']  # fmt: skip
    assert len(letters) == 1 and letters[0].error.startswith("entry: is not JSON")


# ---- nothing is lost -----------------------------------------------------------------------------------


def test_an_entry_left_by_a_killed_consumer_is_delivered_when_it_starts_again(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer
) -> None:
    to = address()
    consumer.redis.rpush(consumer.source, json.dumps(entry(saved_realm, to, idempotency_key=to)))
    # What a consumer killed between BLMOVE and the end of handling leaves behind: the entry moved, not done.
    assert consumer.redis.lmove(consumer.source, consumer.processing) is not None
    restarted = IngestConsumer(consumer.redis, consumer.keys, consumer.dead, name=consumer.name)

    stop = threading.Event()
    thread = threading.Thread(target=restarted.run, args=(stop,), kwargs={"block": 0.2})
    thread.start()
    try:
        assert api.wait_for_result(job_id_for(saved_realm, to))["status"] == "sent"
        wait_empty(restarted.redis, restarted.source, restarted.processing)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(smtp_server.received_for(to)) == 1


def test_run_re_processes_leftovers_first_and_an_idempotency_key_delivers_once(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer
) -> None:
    """Killed after enqueueing but before removing the entry: re-processing it must not mail twice."""
    to = address()
    raw = json.dumps(entry(saved_realm, to, idempotency_key=f"once-{to}"))
    job_id = enqueue(json.loads(raw), "a token the entry's own key wins over")
    assert api.wait_for_result(job_id)["status"] == "sent"
    consumer.redis.rpush(consumer.processing, raw)  # ... and the consumer died before LREM

    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"block": 0.2})
    thread.start()
    try:
        wait_empty(consumer.redis, consumer.processing)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(smtp_server.received_for(to)) == 1


OUTAGES = {
    # what app.send_task raises while the broker is down
    "broker down": OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    # what enqueueing raises while the store is wiped and not restored yet (config/epoch.py)
    "store wiped": StoreUnavailable("the config store lost its data; restore it"),
}


@pytest.mark.parametrize("outage", OUTAGES)
def test_an_outage_keeps_the_entry_until_it_can_be_enqueued(
    keys: Keys, redis_url: str, saved_realm: str, smtp_server: SmtpTestServer, outage: str
) -> None:
    calls: list[tuple[str, str]] = []

    def enqueue_after_an_outage(data: dict[str, Any], token: str) -> str | None:
        calls.append((data["to"], token))
        if len(calls) == 1:
            raise OUTAGES[outage]
        return enqueue(data, token)

    client = ingest_client(redis_url, block=0.2)
    consumer = IngestConsumer(client, keys, runtime().dead_letters, enqueue=enqueue_after_an_outage)
    to = address()
    raw = json.dumps(entry(saved_realm, to, idempotency_key=to))
    client.rpush(consumer.source, raw)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), kwargs={"block": 0.2})
    thread.start()
    try:
        assert api.wait_for_result(job_id_for(saved_realm, to))["status"] == "sent"
        wait_empty(client, consumer.processing)
    finally:
        stop.set()
        thread.join(timeout=10)
        client.close()
    # The second try is the same job (one token), and was not counted as a death of the consumer.
    assert [c[0] for c in calls] == [to, to] and calls[0][1] == calls[1][1]
    assert invalid_letters(raw) == [] and invalid_letters(raw, "internal") == []
    assert len(smtp_server.received_for(to)) == 1
    assert nothing_in_hand(consumer)


def test_an_invalid_entry_cannot_be_requeued_and_says_why(consumer: IngestConsumer, saved_realm: str) -> None:
    from config.errors import InvalidInput

    raw = json.dumps({"realm": saved_realm, "template": "password-reset"})
    consumer.redis.rpush(consumer.source, raw)
    consumer.drain()
    [letter] = invalid_letters(raw)
    with pytest.raises(InvalidInput, match="is an ingest entry that never became a job: push it again"):
        api.requeue_dead_letter(letter.job_id)
    assert runtime().dead_letters.get(letter.job_id).reason == "invalid"


# ---- an entry the consumer fails on, or dies with ------------------------------------------------------


@pytest.mark.parametrize(
    "error, text",
    [
        (OverflowError("int too large to convert to float"), "OverflowError: int too large to convert to float"),
        (ValueError("Maximum serialization\ndepth exceeded"), "ValueError: Maximum serialization depth exceeded"),
        (KeyError("realm"), "KeyError: 'realm'"),
    ],
)  # fmt: skip
def test_an_entry_the_consumer_fails_on_is_dead_lettered_internal_and_the_next_is_delivered(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, caplog: pytest.LogCaptureFixture,
    error: Exception, text: str,
) -> None:  # fmt: skip
    """Whatever the exception (a bug here or in a library), it is this entry's: it must not stop the rest."""
    failing, to = address(), address()
    raw = json.dumps(entry(saved_realm, failing))

    def enqueue_with_a_bug(data: dict[str, Any], token: str) -> str | None:
        if data["to"] == failing:
            raise error
        return enqueue(data, token)

    consumer.redis.rpush(consumer.source, raw, json.dumps(entry(saved_realm, to, idempotency_key=to)))
    with caplog.at_level(logging.ERROR, logger="mailworker.ingest"):
        assert restarted(consumer, enqueue_with_a_bug).drain() == 2

    [letter] = invalid_letters(raw, "internal")
    assert (letter.error, letter.task, letter.realm, letter.to) == (text, "ingest", saved_realm, failing)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR and text in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[1] is error  # with its traceback
    assert api.wait_for_result(job_id_for(saved_realm, to))["status"] == "sent"
    assert nothing_in_hand(consumer) and smtp_server.received_for(failing) == []


def test_an_entry_the_consumer_died_with_twice_is_dead_lettered_without_a_third_try(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, redis_url: str
) -> None:
    poison, to = json.dumps(entry(saved_realm, address())), address()
    consumer.redis.rpush(consumer.source, poison)
    killed_while_handling(consumer, redis_url, "before-enqueue")
    killed_while_handling(consumer, redis_url, "before-enqueue")  # took it up again at its start
    assert in_hand(consumer)["tries"] == "2"
    consumer.redis.rpush(consumer.source, json.dumps(entry(saved_realm, to, idempotency_key=to)))
    tried: list[str] = []

    def recording(data: dict[str, Any], token: str) -> str | None:
        tried.append(data["to"])
        return enqueue(data, token)

    assert restarted(consumer, recording).drain() == 2

    assert tried == [to]  # not a third try of the poison
    [letter] = invalid_letters(poison, "internal")
    assert (letter.error, letter.task) == (DIED_TWICE, "ingest")
    assert api.wait_for_result(job_id_for(saved_realm, to))["status"] == "sent"
    assert nothing_in_hand(consumer)


def test_an_entry_re_processed_after_a_kill_is_the_same_job_and_is_sent_once(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer, redis_url: str
) -> None:
    to = address()
    consumer.redis.rpush(consumer.source, json.dumps(entry(saved_realm, to)))  # no idempotency_key
    killed_while_handling(consumer, redis_url, "after-enqueue")  # enqueued; killed before removing it
    job_id = job_id_for(saved_realm, f"ingest:{in_hand(consumer)['token']}")
    assert api.wait_for_result(job_id)["status"] == "sent"
    enqueued: list[str | None] = []

    def recording(data: dict[str, Any], token: str) -> str | None:
        enqueued.append(enqueue(data, token))
        return enqueued[-1]

    assert restarted(consumer, recording).drain() == 1

    assert enqueued == [job_id]  # dying once is not poison: tried again, as the same job
    assert len(smtp_server.received_for(to)) == 1
    assert nothing_in_hand(consumer)


class Died(BaseException):
    """The process's death as seen from inside it: nothing after it runs, not even `except Exception`."""


def test_an_event_without_an_id_re_processed_after_a_death_is_the_same_job_and_is_sent_once(
    consumer: IngestConsumer, saved_realm: str, smtp_server: SmtpTestServer
) -> None:
    notified = address()
    event = {"type": "UPDATE_PASSWORD", "user": {"email": notified}}
    consumer.redis.rpush(consumer.source, json.dumps({"type": "event", "realm": saved_realm, "event": event}))
    enqueued: list[str | None] = []

    def recording(data: dict[str, Any], token: str) -> str | None:
        enqueued.append(enqueue(data, token))
        if len(enqueued) == 1:
            raise Died
        return enqueued[-1]

    with pytest.raises(Died):
        restarted(consumer, recording).drain()
    assert enqueued[0] is not None and api.wait_for_result(enqueued[0])["status"] == "sent"
    assert restarted(consumer, recording).drain() == 1

    assert enqueued[1] == enqueued[0]
    # The copy was published with the same id; the worker skips it (its delivered-marker). Wait for that.
    deadline = time.monotonic() + 10
    while runtime().redis.zscore(runtime().keys.pending(), enqueued[0]) is not None:
        assert time.monotonic() < deadline, "the re-published copy was not handled"
        time.sleep(0.05)
    assert len(smtp_server.received_for(notified)) == 1
    assert nothing_in_hand(consumer)
