"""One structured log line per delivery attempt, JSON with MAILWORKER_LOG_FORMAT=json; no password, no body.

The deliveries run through the session's real worker and a real SMTP server; the log lines are read from
the handler `configure_logging` installs, as a worker process would write them to stderr.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.cli.common import UNSAFE
from worker.logs import configure_logging
from worker.runtime import runtime

pytestmark = pytest.mark.integration

FIELDS = {"job_id", "realm", "template", "attempt", "outcome", "smtp_code", "ms"}


@contextmanager
def logging_as_configured(log_format: str) -> Iterator[io.StringIO]:
    """Logging as `configure_logging` sets it up in a worker, its stderr handler writing into a buffer."""
    root, pool_log = logging.getLogger(), logging.getLogger("multiprocessing")
    saved = root.handlers[:], root.level, pool_log.handlers[:], pool_log.level
    configure_logging(runtime().settings.model_copy(update={"log_format": log_format, "log_level": "INFO"}))
    buffer = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level, pool_log.handlers[:], pool_level = saved
        root.setLevel(level)
        pool_log.setLevel(pool_level)


@pytest.fixture
def worker_log(celery_worker: Any) -> Iterator[Any]:
    """JSON logging (MAILWORKER_LOG_FORMAT=json); yields a function returning the lines written so far."""
    with logging_as_configured("json") as buffer:
        yield lambda: buffer.getvalue().splitlines()


def attempts_of(lines: list[str], job_id: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r["logger"] == "mailworker.delivery" and r["job_id"] == job_id]


def context(marker: str) -> dict[str, Any]:
    return {"user": {"username": "alice", "first_name": marker}, "link": f"https://iam.example.com/r?k={marker}",
            "link_expiration": 30}  # fmt: skip


def test_one_json_line_per_attempt_with_the_fields_and_no_password_or_body(
    worker_log: Any, realm: str
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    marker = f"body-{uuid.uuid4().hex}"  # rendered into the message body only
    with SmtpTestServer(tls="starttls", require_auth=("mailer", password)) as server:
        runtime().store.save(realm, server.settings_dict())
        server.fail_next("451 4.3.0 try again", times=1)
        job_id = api.send_email(realm, "password-reset", f"{marker}@example.com".replace("body-", "u"),
                                context=context(marker))  # fmt: skip
        assert api.wait_for_result(job_id)["status"] == "sent"
        assert marker in server.messages[0].data.decode()

    lines = worker_log()
    retry, sent = attempts_of(lines, job_id)
    assert set(retry) >= FIELDS and set(sent) >= FIELDS
    assert (retry["attempt"], retry["outcome"], retry["smtp_code"]) == (1, "retry", 451)
    assert "451" in retry["error"]
    assert (sent["attempt"], sent["outcome"], sent["smtp_code"]) == (2, "sent", 250)
    assert (sent["realm"], sent["template"], sent["level"], retry["level"]) == (realm, "password-reset", "INFO",
                                                                                "INFO")  # fmt: skip
    assert isinstance(sent["ms"], int | float) and sent["ms"] >= 0
    output = "\n".join(lines)
    assert password not in output and marker not in output


def test_a_refused_login_is_logged_without_the_credentials(worker_log: Any, realm: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    with SmtpTestServer(tls="starttls", require_auth=("mailer", "the-right-one")) as server:
        runtime().store.save(realm, server.settings_dict(password=password))
        job_id = api.send_email(realm, "email-verification", "bob@example.com", context=context("x"))
        assert api.wait_for_result(job_id)["status"] == "dead-lettered"

    lines = worker_log()
    [dead] = attempts_of(lines, job_id)
    assert (dead["outcome"], dead["smtp_code"], dead["attempt"]) == ("dead:settings", 535, 1)
    assert dead["level"] == "ERROR"  # every mail of the realm fails alike: what an operator alerts on
    output = "\n".join(lines)
    auth_plain = base64.b64encode(f"\0mailer\0{password}".encode()).decode()
    assert password not in output and auth_plain not in output
    assert base64.b64encode(password.encode()).decode() not in output  # AUTH LOGIN sends it alone


def test_text_format_keeps_the_fields_as_key_value_pairs() -> None:
    from worker.logs import PROCESS, log_attempt

    with logging_as_configured("text") as buffer:
        log_attempt(job_id="j1", realm="acme", template="password-reset", attempt=2, outcome="sent",
                    smtp_code=250, ms=12.345)  # fmt: skip
    [line] = buffer.getvalue().splitlines()
    assert line.endswith(
        "mailworker.delivery: delivery sent job_id=j1 realm=acme template=password-reset attempt=2 "
        f"outcome=sent smtp_code=250 ms=12.3 host={socket.gethostname()} pid={os.getpid()} worker={PROCESS.worker}"
    )


# ---- levels, fields and what never shows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "level"),
    [
        ("sent", logging.INFO),
        ("retry", logging.INFO),
        ("retry:circuit-open", logging.INFO),
        ("dropped:cooldown", logging.INFO),
        ("dead:permanent", logging.WARNING),
        ("dead:expired", logging.WARNING),
        ("dead:exhausted", logging.WARNING),
        ("dead:ambiguous", logging.WARNING),
        ("dead:template", logging.WARNING),
        ("dead:invalid", logging.WARNING),
        ("dead:settings", logging.ERROR),
        ("dead:internal", logging.ERROR),
    ],
)
def test_an_attempt_is_logged_at_the_level_of_its_outcome(outcome: str, level: int) -> None:
    from worker.logs import level_for, log_attempt

    assert level_for(outcome) == level
    with logging_as_configured("json") as buffer:
        log_attempt(job_id="j1", realm="acme", template="password-reset", attempt=1, outcome=outcome,
                    smtp_code=None, ms=1.0)  # fmt: skip
    [line] = buffer.getvalue().splitlines()
    assert json.loads(line)["level"] == logging.getLevelName(level)


def test_json_lines_name_the_host_the_process_and_the_worker() -> None:
    from worker.logs import PROCESS, set_worker_name

    before = PROCESS.worker
    with logging_as_configured("json") as buffer:
        set_worker_name("transactional@mx1")
        try:
            logging.getLogger("celery.worker.strategy").info("Task mail.send[j1] received")
        finally:
            set_worker_name(before)
    record = json.loads(buffer.getvalue())
    assert (record["host"], record["pid"], record["worker"]) == (socket.gethostname(), os.getpid(),
                                                                 "transactional@mx1")  # fmt: skip


def test_celerys_success_line_never_carries_the_result() -> None:
    """Celery logs "succeeded in ...: <result>", and a result names its recipient (`accepted`)."""
    from celery.app.trace import LOG_SUCCESS

    context = {"id": "j1", "name": "mail.send", "runtime": 0.05, "args": "[]", "kwargs": "{}",
               "return_value": "{'status': 'sent', 'accepted': ['alice@example.com']}"}  # fmt: skip
    trace_log = logging.getLogger("celery.app.trace")
    with logging_as_configured("json") as buffer:
        trace_log.info(LOG_SUCCESS, context, extra={"data": context})
        assert buffer.getvalue() == ""  # at INFO: not at all (the attempt line says it)
        logging.getLogger().setLevel(logging.DEBUG)
        trace_log.info(LOG_SUCCESS, context, extra={"data": context})
    record = json.loads(buffer.getvalue())
    assert (record["level"], record["msg"]) == ("DEBUG", "Task mail.send[j1] succeeded in 0.05s")


def test_celerys_line_for_a_dead_letter_never_carries_the_error() -> None:
    """tasks/outcomes.py: a dead letter raises DeadLettered; Celery logs "raised expected: <exc>"."""
    from celery.app.trace import LOG_FAILURE

    context = {"id": "j1", "name": "mail.send", "exc": "DeadLettered(permanent: rcpt: 550 alice@example.com)",
               "description": "raised expected", "args": "[{'to': 'alice@example.com'}]", "kwargs": "{}",
               "traceback": "", "hostname": "w1", "internal": False}  # fmt: skip
    trace_log = logging.getLogger("celery.app.trace")
    with logging_as_configured("json") as buffer:
        trace_log.info(LOG_FAILURE.strip(), context, extra={"data": context})
        assert buffer.getvalue() == ""
        logging.getLogger().setLevel(logging.DEBUG)
        trace_log.info(LOG_FAILURE.strip(), context, extra={"data": context})
        unexpected = {**context, "description": "raised unexpected", "exc": "ValueError('a bug')"}
        trace_log.error(LOG_FAILURE.strip(), unexpected, extra={"data": unexpected})
    dead, bug = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert (dead["level"], dead["msg"]) == ("DEBUG", "Task mail.send[j1] ended as a dead letter")
    assert (bug["level"], bug["msg"]) == (
        "ERROR",
        "Task mail.send[j1] raised unexpected: ValueError('a bug')",
    )


def test_an_attempt_line_masks_the_addresses_its_error_quotes() -> None:
    from worker.logs import log_attempt

    error = "rcpt: 451 alice.o+x@example.com: 4.3.0 try again; <zoë@exämple.com>, bob@[127.0.0.1]"
    with logging_as_configured("json") as buffer:
        log_attempt(job_id="j1", realm="acme", template="password-reset", attempt=1, outcome="retry",
                    smtp_code=451, ms=1.0, error=error)  # fmt: skip
    record = json.loads(buffer.getvalue())
    assert record["error"] == "rcpt: 451 ***@example.com: 4.3.0 try again; <***@exämple.com>, ***@[127.0.0.1]"


# ---- log lines cannot be forged --------------------------------------------------------------------------

# What a hostile value puts in a line: a record of its own, a carriage return over the line, a terminal
# sequence, a bidi override, and a lone surrogate (which the stream's UTF-8 encoder refuses).
FORGED = "2026-01-01 00:00:00,000 INFO mailworker.delivery: delivery sent job_id=forged"
HOSTILE = f"x\n{FORGED}\r{FORGED}\x1b[2K\u202e\u2028\x85\ud800"


def hostile_record(exc_info: Any = None) -> logging.LogRecord:
    record = logging.LogRecord("mailworker.ingest", logging.WARNING, __file__, 1, "ingest entry invalid: %s",
                               (HOSTILE,), exc_info)  # fmt: skip
    record.job_id, record.error, record.realm = HOSTILE, HOSTILE, 42
    return record


def written(log_format: str, emit: Any) -> str:
    """What `configure_logging`'s handler writes to a real UTF-8 stream (stderr) while `emit` runs."""
    with logging_as_configured(log_format):
        [handler] = logging.getLogger().handlers
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
        handler.setStream(stream)  # type: ignore[attr-defined]
        emit()
        return raw.getvalue().decode("utf-8")


def test_text_lines_escape_every_field_so_one_record_is_one_line() -> None:
    out = written("text", lambda: logging.getLogger().handle(hostile_record()))
    [line] = out.splitlines()  # str.splitlines splits at \r, \x85, \u2028 as well
    assert "\\n2026-01-01" in line and "\\r2026" in line and "\\x1b[2K\\u202e\\u2028\\x85\\ud800" in line
    assert "error=x\\n2026" in line and "job_id=x\\n2026" in line and "realm=42" in line


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record() -> None:
    def emit() -> None:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            logging.getLogger("mailworker.ingest").exception("ingest entry dead-lettered: %s", "ValueError")

    first, *rest = written("text", emit).splitlines()
    assert "ERROR mailworker.ingest: ingest entry dead-lettered: ValueError" in first
    assert rest[0] == "  | Traceback (most recent call last):"
    assert all(line.startswith("  | ") for line in rest), rest
    assert (
        f"  | {FORGED}\\r{FORGED}\\x1b[2K\\u202e\\u2028\\x85\\ud800" in rest
    )  # its LF kept, under the prefix


def test_json_lines_stay_one_object_each_with_the_hostile_values_intact() -> None:
    def emit() -> None:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            logging.getLogger().handle(hostile_record(exc_info=sys.exc_info()))

    out = written("json", emit)
    [line] = out.split("\n")[:-1]  # one object, one line feed: nothing lost to the encoder
    assert not UNSAFE.search(line)
    record = json.loads(line)
    assert record["msg"] == f"ingest entry invalid: {HOSTILE}" and record["error"] == HOSTILE
    assert record["exc"].endswith(f"ValueError: {HOSTILE}")


def test_an_ingest_field_name_with_a_line_feed_cannot_forge_a_log_line(
    key_prefix: str, redis_url: str
) -> None:
    """As `mailworker ingest` logs with MAILWORKER_LOG_FORMAT=text, on the session's Redis."""
    from config.keys import Keys
    from worker.ingest import IngestConsumer, ingest_client

    client = ingest_client(redis_url, block=0.2)
    consumer = IngestConsumer(client, Keys(key_prefix), runtime().dead_letters, name="forger")
    entry = json.dumps({"realm": "acme", "template": "password-reset", "to": "a@example.com",
                        f"x\n{FORGED}": 1})  # fmt: skip
    out = written("text", lambda: consumer.handle(entry.encode()))
    client.close()
    [line] = out.splitlines()
    assert " WARNING mailworker.ingest: ingest entry invalid: x\\n2026-01-01" in line
    assert "outcome=invalid" in line


def test_an_ingest_entry_cannot_flood_the_log_with_a_huge_field_name(key_prefix: str, redis_url: str) -> None:
    from config.keys import Keys
    from worker.ingest import ERROR_KEPT, IngestConsumer, ingest_client

    client = ingest_client(redis_url, block=0.2)
    consumer = IngestConsumer(client, Keys(key_prefix), runtime().dead_letters, name="flood")
    entry = json.dumps(
        {"realm": "acme", "template": "password-reset", "to": "a@example.com", "x" * 200_000: 1}
    )
    out = written("text", lambda: consumer.handle(entry.encode()))
    client.close()
    [line] = out.splitlines()
    assert len(line) < ERROR_KEPT + 300 and "... (2" in line  # says how long the error was
    [letter] = [
        lt for lt in runtime().dead_letters.list(reason="invalid", limit=50) if "x" * 1000 in lt.error
    ]
    assert len(letter.error) > 200_000  # the dead letter keeps the whole rule
