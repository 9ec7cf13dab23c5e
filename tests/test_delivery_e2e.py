"""The delivery pipeline end to end: producer API -> Redis broker -> real Celery worker -> real SMTP server.

Each test reads like the sentence of the issue it proves. The worker runs in a thread of this process
(tests/conftest.py), consumes from the real Redis, and talks SMTP over loopback to aiosmtpd, with real TLS
from a trustme CA. Nothing is mocked.
"""

from __future__ import annotations

import json
import time
import uuid
from email.message import EmailMessage
from email.utils import parseaddr

import pytest

from config.errors import InvalidInput
from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration

USER = {"username": "alice", "first_name": "Jürgen", "last_name": "Müller", "email": "alice@example.com"}


def context(**extra):
    return {"user": USER, "realm_name": "ACME Bank", "link": "https://iam.example.com/reset?k=1",
            "link_expiration": 30, **extra}  # fmt: skip


def save(realm: str, server: SmtpTestServer, **overrides) -> None:
    runtime().store.save(realm, server.settings_dict(**overrides))


def unique_address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture(autouse=True)
def _worker(celery_worker):
    return celery_worker


def test_password_reset_arrives_with_correct_headers(realm, smtp_server):
    save(realm, smtp_server, from_display_name="Jürgen Müller GmbH – Sicherheit",
         reply_to="support@example.com", reply_to_display_name="ACME Support",
         envelope_from="bounces@example.com")  # fmt: skip
    to = unique_address()
    job_id = api.send_email(realm, "password-reset", to, locale="de", context=context())

    result = api.wait_for_result(job_id)

    assert result["status"] == "sent" and result["accepted"] == [to] and result["attempts"] == 1
    [received] = smtp_server.received_for(to)
    message = received.message
    assert isinstance(message, EmailMessage)
    assert received.mail_from == "bounces@example.com"  # Return-Path is the bounce address
    assert parseaddr(str(message["From"])) == ("Jürgen Müller GmbH – Sicherheit", "noreply@example.com")
    assert parseaddr(str(message["Reply-To"])) == ("ACME Support", "support@example.com")
    assert message["To"] == to
    assert message["Subject"] == "Setzen Sie Ihr Passwort zurück"  # German, decoded from RFC 2047
    assert message["Message-ID"] == result["message_id"] and result["message_id"].endswith("@example.com>")
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert "https://iam.example.com/reset?k=1" in message.get_body(("plain",)).get_content()
    assert "Jürgen" in message.get_body(("html",)).get_content()


def test_reply_to_is_absent_by_default_so_replies_go_to_from(realm, smtp_server):
    save(realm, smtp_server)
    to = unique_address()
    api.wait_for_result(api.send_email(realm, "email-verification", to, context=context()))
    [received] = smtp_server.received_for(to)
    assert received.message["Reply-To"] is None
    assert received.mail_from == "noreply@example.com"


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_delivers_over_tls_with_authentication(realm, tls):
    with SmtpTestServer(tls=tls, require_auth=("mailer", "s3cret-Pässword")) as server:
        save(realm, server)
        to = unique_address()
        result = api.wait_for_result(api.send_email(realm, "email-verification", to, context=context()))
        assert result["status"] == "sent"
        [received] = server.received_for(to)
        assert received.tls
        assert received.auth is not None and (received.auth.login, received.auth.success) == ("mailer", True)


def test_starttls_stripping_server_gets_no_mail_and_no_password(realm):
    with SmtpTestServer(tls="none", offer_starttls=False, require_auth=("mailer", "pw"),
                        auth_require_tls=False) as server:  # fmt: skip
        save(realm, server, starttls=True)
        result = api.wait_for_result(
            api.send_email(realm, "email-verification", unique_address(), context=context())
        )
        assert result["status"] == "dead-lettered" and result["reason"] == "settings"
        assert "StartTLS" in result["error"]
        assert server.messages == [] and server.auth_attempts == []
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()


def test_wrong_password_is_a_settings_problem_not_a_retry_loop(realm):
    with SmtpTestServer(tls="starttls", require_auth=("mailer", "right")) as server:
        save(realm, server, password="wrong")
        result = api.wait_for_result(
            api.send_email(realm, "email-verification", unique_address(), context=context())
        )
        assert result["status"] == "dead-lettered" and result["reason"] == "settings"
        assert result["smtp_code"] == 535 and result["attempts"] == 1
        assert len(server.auth_attempts) == 1
        letter = runtime().dead_letters.get(result["job_id"])
        assert letter.reason == "settings" and "535" in letter.error


def test_retries_after_451_then_delivers_on_the_third_attempt(realm, smtp_server):
    save(realm, smtp_server)
    smtp_server.fail_next("451 4.3.0 try again", times=2)
    to = unique_address()
    result = api.wait_for_result(api.send_email(realm, "password-reset", to, context=context()))
    assert result["status"] == "sent" and result["attempts"] == 3
    assert len(smtp_server.received_for(to)) == 1


def test_550_lands_in_dead_letters_with_the_reply_and_is_not_retried(realm, smtp_server):
    save(realm, smtp_server)
    to = unique_address()
    smtp_server.reject_recipient(to, f"550 5.1.1 <{to}>: mailbox unavailable")
    result = api.wait_for_result(api.send_email(realm, "password-reset", to, context=context()))
    assert result["status"] == "dead-lettered" and result["reason"] == "permanent"
    assert result["attempts"] == 1 and result["smtp_code"] == 550
    letter = runtime().dead_letters.get(result["job_id"])
    assert "mailbox unavailable" in letter.error and letter.to == to and letter.template == "password-reset"
    assert smtp_server.verbs().count("RCPT") == 1


def test_dead_letter_requeue_delivers_once_the_cause_is_fixed(realm, smtp_server):
    save(realm, smtp_server)
    to = unique_address()
    smtp_server.reject_recipient(to)
    dead = api.wait_for_result(api.send_email(realm, "email-verification", to, context=context()))
    assert dead["status"] == "dead-lettered"
    smtp_server.reset()  # the mailbox exists now
    job_id = api.requeue_dead_letter(dead["job_id"])
    assert api.wait_for_result(job_id)["status"] == "sent"
    assert len(smtp_server.received_for(to)) == 1
    assert runtime().dead_letters.list(realm=realm) == []


def test_a_dropped_session_is_reopened_for_the_next_message(realm, smtp_server):
    save(realm, smtp_server)
    smtp_server.drop_after(1)  # the server closes the connection after each message
    addresses = [unique_address() for _ in range(3)]
    for to in addresses:  # one after the other, so each reuses the worker's session if it can
        assert (
            api.wait_for_result(api.send_email(realm, "email-verification", to, context=context()))["status"]
            == "sent"
        )
    assert all(len(smtp_server.received_for(to)) == 1 for to in addresses)
    assert smtp_server.connections >= 2


def test_an_idempotency_key_delivers_once(realm, smtp_server):
    save(realm, smtp_server)
    to = unique_address()
    first = api.send_email(realm, "password-reset", to, context=context(), idempotency_key="reset-42")
    sent = api.wait_for_result(first)
    assert sent["status"] == "sent"
    second = api.send_email(realm, "password-reset", to, context=context(), idempotency_key="reset-42")
    assert second == first
    assert api.wait_for_result(second)["message_id"] == sent["message_id"]
    assert len(smtp_server.received_for(to)) == 1


def test_a_redelivered_job_is_skipped_by_its_delivered_marker(realm, smtp_server):
    """What happens when the broker hands a delivered job out again (acks_late after a worker died)."""
    from worker.app import app

    save(realm, smtp_server)
    to = unique_address()
    job_id = api.send_email(realm, "password-reset", to, context=context())
    assert api.wait_for_result(job_id)["status"] == "sent"
    job = runtime().services.ledger.delivered(job_id)
    assert job is not None
    api.result(job_id).forget()
    payload = [json.loads(json.dumps(_job_of(realm, job_id, to)))]
    app.send_task("mail.send", args=payload, task_id=job_id, queue="transactional")  # the redelivered copy
    assert api.wait_for_result(job_id)["status"] == "duplicate-skipped"
    assert len(smtp_server.received_for(to)) == 1


def _job_of(realm: str, job_id: str, to: str) -> dict:
    from worker.jobs.model import new_job

    return (
        new_job(realm, "password-reset", to, context=context()).model_copy(update={"id": job_id}).model_dump()
    )


def test_a_reset_link_that_expires_while_failing_is_dead_lettered_as_expired(realm, smtp_server):
    save(realm, smtp_server)
    smtp_server.fail_next("451 4.3.0 try again", times=20)
    started = time.monotonic()
    result = api.wait_for_result(api.send_email(realm, "password-reset", unique_address(), context=context(),
                                                expires_in=0.3))  # fmt: skip
    assert result["status"] == "dead-lettered" and result["reason"] == "expired"
    assert time.monotonic() - started < 10
    assert smtp_server.messages == []


def test_a_missing_template_variable_is_dead_lettered_not_retried(realm, smtp_server):
    save(realm, smtp_server)
    ctx = context()
    del ctx["link"]
    result = api.wait_for_result(api.send_email(realm, "password-reset", unique_address(), context=ctx))
    assert result["status"] == "dead-lettered" and result["reason"] == "template"
    assert "'link' is undefined" in result["error"] and result["attempts"] == 1
    assert smtp_server.messages == []


def test_a_settings_change_is_picked_up_by_the_next_message(realm, smtp_server):
    save(realm, smtp_server)
    assert api.wait_for_result(
        api.send_email(realm, "email-verification", unique_address(), context=context())
    )
    with SmtpTestServer() as other:
        runtime().store.save(realm, {"port": other.port})
        to = unique_address()
        assert (
            api.wait_for_result(api.send_email(realm, "email-verification", to, context=context()))["status"]
            == "sent"
        )
        assert len(other.received_for(to)) == 1 and smtp_server.received_for(to) == []


def test_iam_event_sends_its_notice_and_ignores_other_types(realm, smtp_server):
    save(realm, smtp_server)
    to = unique_address()
    event = {"id": uuid.uuid4().hex, "type": "UPDATE_PASSWORD", "time": 1764000000000, "ipAddress": "198.51.100.4",
             "clientId": "account-console", "user": {"email": to, "username": "alice", "locale": "de"}}  # fmt: skip
    job_id = api.publish_event(realm, event)
    assert job_id is not None
    assert api.wait_for_result(job_id)["status"] == "sent"
    [received] = smtp_server.received_for(to)
    assert "198.51.100.4" in received.message.get_body(("plain",)).get_content()
    assert api.publish_event(realm, {**event, "type": "LOGIN"}) is None


def test_which_events_notify_is_a_realm_setting(realm, smtp_server):
    save(realm, smtp_server, notify_events=["LOGIN_ERROR"])
    event = {"type": "UPDATE_PASSWORD", "user": {"email": unique_address()}}
    assert api.publish_event(realm, event) is None
    assert api.publish_event(realm, {**event, "type": "LOGIN_ERROR"}) is not None


def _queue_length() -> int:
    from worker.app import TRANSACTIONAL

    prefix = runtime().settings.broker_key_prefix
    return int(runtime().redis.llen(f"{prefix}{TRANSACTIONAL}"))


@pytest.mark.parametrize(
    "template, to, kwargs, field",
    [
        ("no-such-template", "a@example.com", {}, "template"),
        ("password-reset", "not an address", {}, "to"),
        ("password-reset", "a@example.com\r\nBcc: eve@evil.example", {}, "to"),
        ("password-reset", "a@example.com", {"context": {"blob": "x" * 70_000}}, "context"),
        ("password-reset", "a@example.com", {"context": {"when": object()}}, "context"),
        ("password-reset", "a@example.com", {"locale": "de\nX-Evil: 1"}, "locale"),
    ],
)
def test_bad_input_is_rejected_before_anything_reaches_redis(realm, smtp_server, template, to, kwargs, field):
    save(realm, smtp_server)
    before = _queue_length()
    with pytest.raises(InvalidInput) as excinfo:
        api.send_email(realm, template, to, **kwargs)
    assert excinfo.value.problems[0][0] == field
    assert _queue_length() == before


def test_unknown_realm_is_rejected_at_the_api(realm):
    with pytest.raises(InvalidInput, match="no saved SMTP settings"):
        api.send_email(realm, "password-reset", "a@example.com", context=context())


def test_no_secret_travels_in_task_arguments_or_results(realm):
    password = f"pw-{uuid.uuid4().hex}"
    with SmtpTestServer(tls="starttls", require_auth=("mailer", password)) as server:
        save(realm, server)
        job_id = api.send_email(realm, "email-verification", unique_address(), context=context())
        result = api.wait_for_result(job_id)
        assert result["status"] == "sent"
        meta = runtime().redis.get(f"celery-task-meta-{job_id}")
        assert meta is not None and password not in meta
        assert password not in json.dumps(result)
        # every key of this session's prefix (store, ledger, broker) holds no clear password
        for key in runtime().redis.scan_iter(match=f"{runtime().settings.key_prefix}*", count=1000):
            assert password not in key
            kind = runtime().redis.type(key)
            values = {
                # read undecoded: bulk jobs keep bitmaps (binary) in strings
                "string": lambda k: [runtime().redis.execute_command("GET", k, NEVER_DECODE=True)],
                "hash": lambda k: list(runtime().redis.hgetall(k).values()),
                "list": lambda k: runtime().redis.lrange(k, 0, -1),
                "set": lambda k: list(runtime().redis.smembers(k)),
                "zset": lambda k: runtime().redis.zrange(k, 0, -1),
            }.get(kind, lambda k: [])(key)
            assert not any(password in str(v) for v in values), key


def test_recipient_cooldown_sends_one_reset_and_drops_the_rest(realm, smtp_server, monkeypatch):
    monkeypatch.setattr(runtime().settings, "recipient_cooldown", 30)
    save(realm, smtp_server)
    to = unique_address()
    jobs = [api.send_email(realm, "password-reset", to, context=context()) for _ in range(20)]
    results = [api.wait_for_result(job_id) for job_id in jobs]
    assert sorted(r["status"] for r in results).count("sent") == 1
    assert all(r["reason"] == "cooldown" for r in results if r["status"] != "sent")
    assert len(smtp_server.received_for(to)) == 1
    assert runtime().services.stats.last_hour(realm)["dropped_cooldown"] == 19


def test_a_producer_needs_no_secret_key(realm, smtp_server):
    """Producers only enqueue: they never decrypt a password, so they do not get the key to do so."""
    import os
    import subprocess
    import sys

    save(realm, smtp_server)
    to = unique_address()
    env = {k: v for k, v in os.environ.items() if k != "MAILWORKER_SECRET_KEY"}
    script = (
        "import json, sys; from tasks import api; "
        f"print(api.send_email({realm!r}, 'email-verification', {to!r}, context=json.loads(sys.argv[1])))"
    )
    produced = subprocess.run(
        [sys.executable, "-c", script, json.dumps(context())], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    assert api.wait_for_result(produced.stdout.strip())["status"] == "sent"
    assert len(smtp_server.received_for(to)) == 1


def test_a_lost_reply_after_the_data_is_retried_later_with_the_same_message_id(realm, smtp_server):
    """The server took the mail but its reply never came: one retry after the backoff, never at once."""
    save(realm, smtp_server, data_timeout=2)
    smtp_server.lose_reply_next(times=1)
    to = unique_address()
    job_id = api.send_email(realm, "password-reset", to, context=context())

    result = api.wait_for_result(job_id, timeout=30)

    assert result["status"] == "sent" and result["attempts"] == 2 and result["ambiguous"] == 1
    copies = smtp_server.received_for(to)
    assert len(copies) == 2  # the first copy did arrive: at most one extra, said in the result
    assert {str(c.message["Message-ID"]) for c in copies} == {result["message_id"]}  # one id, dedupable
    assert runtime().services.stats.last_hour(realm)["ambiguous"] == 1


def test_replies_lost_twice_end_in_a_dead_letter_that_says_the_mail_may_have_arrived(realm, smtp_server):
    save(realm, smtp_server, data_timeout=2)
    smtp_server.lose_reply_next(times=5)
    to = unique_address()
    job_id = api.send_email(realm, "password-reset", to, context=context())

    result = api.wait_for_result(job_id, timeout=30)

    assert result["status"] == "dead-lettered" and result["reason"] == "ambiguous"
    assert result["ambiguous"] == 2 and result["maybe_delivered"] is True
    assert "may have been delivered" in result["error"]
    assert len(smtp_server.received_for(to)) == 2  # bounded: never more copies than the policy allows
    letter = runtime().dead_letters.get(job_id)
    assert letter.reason == "ambiguous" and "may have been delivered" in letter.error


def test_a_slow_reply_to_the_data_is_waited_for_and_does_not_open_the_breaker(realm, smtp_server):
    """RFC 5321 gives the server minutes to answer the end of data: slower than `timeout` is not dead."""
    save(realm, smtp_server, timeout=0.5, data_timeout=5)
    smtp_server.delay_data_reply(1.5, times=4)
    addresses = [unique_address() for _ in range(4)]
    ids = [api.send_email(realm, "password-reset", to, context=context()) for to in addresses]

    results = [api.wait_for_result(job_id, timeout=30) for job_id in ids]

    assert [r["status"] for r in results] == ["sent"] * 4 and all(r["attempts"] == 1 for r in results)
    assert all(len(smtp_server.received_for(to)) == 1 for to in addresses)
    assert runtime().breaker.state(realm) == {}  # no failure counted against the realm's server


def test_an_unexpected_error_is_a_dead_letter_naming_it_not_a_failed_task(realm, smtp_server, monkeypatch):
    from worker.delivery import deliver as delivery

    save(realm, smtp_server)

    def broken(*args, **kwargs):
        raise ValueError("Port out of range 0-65535")

    monkeypatch.setattr(delivery, "send_message", broken)
    job_id = api.send_email(realm, "email-verification", unique_address(), context=context())

    result = api.wait_for_result(job_id, timeout=30)

    assert result["status"] == "dead-lettered" and result["reason"] == "internal"
    assert result["error"] == "ValueError: Port out of range 0-65535"
    # Celery: FAILURE with DeadLettered (Flower shows it failed), not a bare exception the sweeper would
    # republish (tasks/outcomes.py).
    failure = api.result(job_id)
    assert (
        failure.state == "FAILURE"
        and repr(failure.result) == "DeadLettered(internal: " + result["error"] + ")"
    )
    assert job_id not in runtime().pending.overdue(now=time.time() + 10**7)  # ended: not published again


def test_a_job_whose_worker_died_after_the_data_is_sent_again_and_says_ambiguous(realm, smtp_server):
    """What a takeover finds after a SIGKILL between the final dot and the server's reply."""
    from worker.jobs.model import new_job

    save(realm, smtp_server)
    to = unique_address()
    job = new_job(realm, "password-reset", to, context=context())
    ledger = runtime().ledger
    ledger.note_data_out(job.id, ledger.next_attempt(job.id))  # the dead holder's attempt 1
    api._publish_tracked("mail.send", [job.model_dump(mode="json")], job.id, 0)

    result = api.wait_for_result(job.id, timeout=30)

    assert result["status"] == "sent" and result["attempts"] == 2 and result["ambiguous"] == 1
    assert len(smtp_server.received_for(to)) == 1


def test_the_realms_rate_limit_holds_for_transactional_mail_too(realm, smtp_server):
    """30 resets to a realm limited to 5/s used to leave in 0.19 s: the provider's limit is for all mail."""
    save(realm, smtp_server, rate_limit_per_second=5)
    ids = [api.send_email(realm, "password-reset", unique_address(), context=context()) for _ in range(30)]

    sent_at = sorted(api.wait_for_result(job_id, timeout=60)["sent_at"] for job_id in ids)

    assert sent_at[-1] - sent_at[0] >= (30 - 1) / 5 - 0.5  # 5.8 s at 5/s, less the limiter's slack
    # No one-second window holds more than the limit (plus one for the window's edges).
    assert max(sum(1 for t in sent_at if start <= t < start + 1) for start in sent_at) <= 6


def test_transactional_mail_goes_first_within_the_realms_limit(realm, smtp_server):
    """Bulk senders (here: other hosts) have reserved the next 20 s of a 2/s realm; a reset does not wait."""
    save(realm, smtp_server, rate_limit_per_second=2)
    limiter = runtime().limiter
    assert limiter.reserve(realm, 40, 2, None).reserved  # bulk's groups, 40 messages ahead
    started = time.time()
    reset = api.send_email(realm, "password-reset", unique_address(), context=context())

    result = api.wait_for_result(reset, timeout=40)

    assert result["status"] == "sent" and result["sent_at"] - started < 3
    # ...and bulk gives way: its next reservation now waits behind the reset as well.
    assert limiter.reserve(realm, 1, 2, None).wait >= 40 / 2 - 3
