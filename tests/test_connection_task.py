"""mail.test_connection through a real Celery worker on the real Redis, and `mailworker settings test`."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import worker.runtime
from config.errors import InvalidInput, NotFound, WorkerUnavailable
from config.settings import get_settings
from tasks import connection
from tests.support.smtp_server import SmtpTestServer, closed_port, session_ca
from worker.app import app
from worker.cli import settings_test_cmd
from worker.runtime import runtime

pytestmark = pytest.mark.integration

PASSWORD = "Tc5-distinctive-test-connection-pw"
USER = "bot@acme.example"
WAIT_S = 15.0


@pytest.fixture(scope="module")
def ca_env() -> Iterator[str]:
    """Workers trust the test CA through MAILWORKER_SMTP_CA_FILE, as an admin would configure it."""
    ca_file = session_ca().ca_file
    previous = os.environ.get("MAILWORKER_SMTP_CA_FILE")
    os.environ["MAILWORKER_SMTP_CA_FILE"] = ca_file
    get_settings.cache_clear()
    worker.runtime.reset()
    yield ca_file
    if previous is None:
        os.environ.pop("MAILWORKER_SMTP_CA_FILE", None)
    else:
        os.environ["MAILWORKER_SMTP_CA_FILE"] = previous
    get_settings.cache_clear()
    worker.runtime.reset()


@pytest.fixture(scope="module")
def control_worker(ca_env: str, celery_worker: object) -> Iterator[None]:
    # The session's one in-thread worker consumes `control` too: a second in-process worker would share
    # Celery's module-level state with it and hang both at shutdown (once another module started it).
    yield


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(tls="starttls", require_auth=(USER, PASSWORD)) as server:
        yield server


@pytest.fixture
def server(smtp: SmtpTestServer) -> SmtpTestServer:
    smtp.reset()
    return smtp


@pytest.fixture
def sent_kwargs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every task's kwargs as they go into the broker."""
    seen: list[dict[str, Any]] = []
    original = app.send_task

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append({"name": name, **kwargs})
        return original(name, *args, **kwargs)

    monkeypatch.setattr(app, "send_task", spy)
    return seen


def no_secret(value: Any) -> Any:
    assert PASSWORD not in json.dumps(value, default=str)
    return value


def save(realm: str, server: SmtpTestServer, **overrides: Any) -> None:
    runtime().store.save(realm, server.settings_dict(connect_timeout=2, timeout=2, **overrides))


# ---- through the worker ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("control_worker")
def test_saved_settings_every_stage_ok(server: SmtpTestServer, realm: str, sent_kwargs: list[Any]) -> None:
    save(realm, server)

    status = no_secret(connection.test_connection(realm, timeout=WAIT_S))

    assert status["ok"], status
    assert (status["realm"], status["source"], status["version"]) == (realm, "saved", 1)
    assert [s["name"] for s in status["stages"]] == ["resolve", "connect", "ehlo", "tls", "auth"]
    assert all(s["ok"] for s in status["stages"])
    assert status["mode"] == "starttls" and status["port"] == server.port
    (task,) = sent_kwargs
    assert task["name"] == "mail.test_connection" and task["queue"] == "control"
    assert set(task["kwargs"]) == {"realm", "use_draft", "send_to", "deadline_s"}
    no_secret(task)


@pytest.mark.usefixtures("control_worker")
def test_the_draft_is_tested_rather_than_the_saved(
    server: SmtpTestServer, realm: str, sent_kwargs: list[Any]
) -> None:
    save(realm, server, port=closed_port())  # saved: a port nobody listens on
    # The admin's edit, not saved yet (a new port means typing the password again).
    runtime().store.set_draft(realm, {"port": server.port, "password": PASSWORD})

    draft = no_secret(connection.test_connection(realm, timeout=WAIT_S))
    saved = no_secret(connection.test_connection(realm, use_draft=False, timeout=WAIT_S))

    assert draft["ok"] and draft["source"] == "draft" and draft["version"] == 1
    assert draft["port"] == server.port
    assert not saved["ok"] and saved["source"] == "saved"
    assert saved["failed_stage"] == "connect" and "connection refused" in saved["hint"]
    assert [call["kwargs"]["use_draft"] for call in sent_kwargs] == [True, False]
    no_secret(sent_kwargs)


@pytest.mark.usefixtures("control_worker")
def test_send_to_delivers_the_email_test_message(server: SmtpTestServer, realm: str) -> None:
    save(realm, server, from_display_name="ACME Accounts")

    status = no_secret(connection.test_connection(realm, send_to="admin@acme.example", timeout=WAIT_S))

    assert status["ok"], status
    assert status["stages"][-1]["name"] == "send" and status["smtp_code"] == 250
    (received,) = server.received_for("admin@acme.example")
    message = received.message
    assert message["Message-ID"] == status["message_id"]
    assert realm in message["Subject"]
    assert message["From"].addresses[0].display_name == "ACME Accounts"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "test message" in text.lower()
    assert received.auth is not None and received.auth.login == USER and received.tls


@pytest.mark.usefixtures("control_worker")
def test_wrong_password_gives_535_and_a_hint(server: SmtpTestServer, realm: str) -> None:
    save(realm, server)
    runtime().store.set_draft(realm, {"password": "not-" + PASSWORD})

    status = no_secret(connection.test_connection(realm, timeout=WAIT_S))
    assert "not-" + PASSWORD not in json.dumps(status)

    assert not status["ok"] and status["source"] == "draft"
    assert status["failed_stage"] == "auth" and status["smtp_code"] == 535
    assert "user name or password" in status["hint"]


# ---- before anything is enqueued ------------------------------------------------------------------------


def test_a_realm_without_settings_fails_before_enqueuing(realm: str, sent_kwargs: list[Any]) -> None:
    with pytest.raises(NotFound, match="no SMTP settings"):
        connection.test_connection(realm, timeout=WAIT_S)
    assert sent_kwargs == []


def test_a_bad_send_to_fails_before_enqueuing(
    server: SmtpTestServer, realm: str, sent_kwargs: list[Any]
) -> None:
    save(realm, server)
    with pytest.raises(InvalidInput, match="send_to"):
        connection.test_connection(realm, send_to="not an address", timeout=WAIT_S)
    assert sent_kwargs == []


def test_no_live_worker_is_said_at_once_not_after_the_timeout(
    server: SmtpTestServer, realm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(realm, server)
    monkeypatch.setattr(connection, "CONTROL", "mwtest-nobody-listens")

    started = time.monotonic()
    with pytest.raises(WorkerUnavailable, match="no live worker consumes the mwtest-nobody-listens queue"):
        connection.test_connection(realm, timeout=30)
    assert time.monotonic() - started < 2  # not 30 s of silence


def test_the_task_body_reports_missing_settings(realm: str) -> None:
    status = connection.connection_status(realm)
    assert not status["ok"] and status["failed_stage"] == "settings" and "no SMTP settings" in status["error"]


# ---- the command ----------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailworker")
    groups = parser.add_subparsers(dest="command", required=True)
    settings = groups.add_parser("settings").add_subparsers(dest="settings_command", required=True)
    settings_test_cmd.register_test(settings)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


@pytest.mark.usefixtures("control_worker")
def test_cli_good_and_bad(server: SmtpTestServer, realm: str, capsys: pytest.CaptureFixture[str]) -> None:
    save(realm, server)

    code = run_cli(["settings", "test", "--realm", realm, "--timeout", str(WAIT_S)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"realm {realm}, saved settings (version 1)" in out
    assert "stage" in out and "detail" in out
    assert "tls      ✓" in out
    assert "✓ OK: the settings work" in out

    runtime().store.set_draft(realm, {"starttls": False, "password": PASSWORD})
    code = run_cli(["settings", "test", "--realm", realm, "--timeout", str(WAIT_S)])
    out = capsys.readouterr().out
    assert code == 1
    assert "draft settings (based on version 1)" in out
    assert "auth     ✗" in out
    assert "✗ FAILED at auth: auth is on but" in out
    assert "hint: Auth is on but the server offers no AUTH" in out

    code = run_cli(["settings", "test", "--realm", realm, "--saved", "--json", "--timeout", str(WAIT_S)])
    status = json.loads(capsys.readouterr().out)
    assert code == 0 and status["ok"] and status["source"] == "saved"
    no_secret(status)
