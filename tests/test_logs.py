"""One structured log line per delivery attempt, JSON with MAILWORKER_LOG_FORMAT=json; no password, no body.

The deliveries run through the session's real worker and a real SMTP server; the log lines are read from
the handler `configure_logging` installs, as a worker process would write them to stderr.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.logs import configure_logging
from worker.runtime import runtime

pytestmark = pytest.mark.integration

FIELDS = {"job_id", "realm", "template", "attempt", "outcome", "smtp_code", "ms"}


@contextmanager
def logging_as_configured(log_format: str) -> Iterator[io.StringIO]:
    """Logging as `configure_logging` sets it up in a worker, its stderr handler writing into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(runtime().settings.model_copy(update={"log_format": log_format, "log_level": "INFO"}))
    buffer = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


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
    assert (sent["realm"], sent["template"], sent["level"]) == (realm, "password-reset", "INFO")
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
    output = "\n".join(lines)
    auth_plain = base64.b64encode(f"\0mailer\0{password}".encode()).decode()
    assert password not in output and auth_plain not in output
    assert base64.b64encode(password.encode()).decode() not in output  # AUTH LOGIN sends it alone


def test_text_format_keeps_the_fields_as_key_value_pairs() -> None:
    from worker.logs import log_attempt

    with logging_as_configured("text") as buffer:
        log_attempt(job_id="j1", realm="acme", template="password-reset", attempt=2, outcome="sent",
                    smtp_code=250, ms=12.345)  # fmt: skip
    [line] = buffer.getvalue().splitlines()
    assert line.endswith(
        "mailworker.delivery: delivery sent job_id=j1 realm=acme template=password-reset attempt=2 "
        "outcome=sent smtp_code=250 ms=12.3"
    )
