"""Bounces end to end, with real parts only: a real Celery worker delivers over loopback to aiosmtpd, the real
bounce receiver (`mailworker bounces` as a subprocess, or its server in a thread) gets DSNs over SMTP/LMTP
with smtplib, and everything is read back from the real Redis.

The story of the issue: a job delivered with VERP, its DSN sent to the receiver -> status `bounced`, the
outcome counted, the address suppressed; a bulk notice to it is skipped; a password reset still goes out,
flagged.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import api
from tasks.status import job_status
from tests.support import exim
from tests.support.bounce_samples import arf_complaint, postfix_dsn
from tests.support.smtp_server import SmtpTestServer
from tests.test_bounces_parse import HOSTILE
from worker.bounces.receiver import AddressBook, BounceHandler, start
from worker.runtime import runtime

pytestmark = pytest.mark.integration

CONTEXT = {"user": {"username": "bob", "email": "x@example.com"}, "realm_name": "ACME",
           "link": "https://iam.example.com/reset?k=1", "link_expiration": 30}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def realm_fields() -> dict[str, dict]:
    store = runtime().store
    return {realm: fields for realm in store.realms() if (fields := store.saved_fields(realm))}


@pytest.fixture(autouse=True)
def _worker(celery_worker):
    return celery_worker


@pytest.fixture
def bounce_address() -> str:
    return f"bounces-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture
def receiver() -> Iterator[tuple[int, bool]]:
    """The receiver's server in a thread of this process, SMTP; yields its port."""
    port = free_port()
    controller = start(BounceHandler(AddressBook(realm_fields), runtime().bounces), "127.0.0.1", port)
    yield port
    controller.stop()


@pytest.fixture
def lmtp_receiver() -> Iterator[int]:
    port = free_port()
    controller = start(
        BounceHandler(AddressBook(realm_fields), runtime().bounces), "127.0.0.1", port, lmtp=True
    )
    yield port
    controller.stop()


def deliver(
    realm: str, server: SmtpTestServer, bounce_address: str, to: str, *, verp: bool = True
) -> tuple[str, str]:
    """(job id, envelope sender it went out with) of a delivered password reset."""
    runtime().store.save(realm, server.settings_dict(envelope_from=bounce_address, verp=verp))
    job_id = api.send_email(realm, "password-reset", to, context=CONTEXT)
    result = api.wait_for_result(job_id)
    assert result["status"] == "sent"
    [received] = server.received_for(to)
    return job_id, received.mail_from


def send_bounce(port: int, rcpt: str, data: bytes, *, lmtp: bool = False) -> None:
    client = smtplib.LMTP("127.0.0.1", port) if lmtp else smtplib.SMTP("127.0.0.1", port, timeout=10)
    with client:
        client.sendmail("", [rcpt], data)


@pytest.fixture
def recorded(monkeypatch) -> list:
    """Every outcome recorded in this process (the worker thread's too), recorded as before."""
    outcomes, seen = runtime().outcomes, []
    original = outcomes.record

    def record(outcome, also=None):
        seen.append(outcome)
        original(outcome, also=also)

    monkeypatch.setattr(outcomes, "record", record)
    return seen


def test_a_dsn_for_a_verp_job_bounces_it_suppresses_bulk_but_not_a_password_reset(
    realm, smtp_server, bounce_address, recorded
):
    to = f"gone-{uuid.uuid4().hex[:6]}@example.com"
    job_id, mail_from = deliver(realm, smtp_server, bounce_address, to)
    local, _, domain = bounce_address.partition("@")
    assert (
        mail_from.startswith(local + "+")
        and mail_from.endswith("@" + domain)
        and len(mail_from.partition("@")[0]) <= 64
    )

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "worker.cli", "bounces", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "receiving bounces (SMTP) on 127.0.0.1" in (
            process.stdout.readline() if process.stdout else ""
        )
        send_bounce(port, mail_from, postfix_dsn(mail_from, to, "<someone-else@example.com>"))
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0  # SIGTERM: a clean stop

    status = job_status(job_id)
    assert status["status"] == "bounced"
    assert (status["bounce"]["kind"], status["bounce"]["status_code"], status["bounce"]["smtp_code"]) == (
        "hard",
        "5.1.1",
        550,
    )
    assert "User unknown" in status["bounce"]["diagnostic"]
    cli = subprocess.run([sys.executable, "-m", "worker.cli", "status", job_id, "--json"], env=os.environ,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(cli.stdout)["status"] == "bounced"
    assert runtime().outcomes.totals()[(realm, "bounced")] == 1
    suppression = runtime().suppressions.get(realm, to)
    assert suppression is not None and (suppression.reason, suppression.job_id) == ("hard_bounce", job_id)

    other = f"fine-{uuid.uuid4().hex[:6]}@example.com"
    progress = api.wait_for_bulk(
        api.send_bulk(realm, "email-test", [to.upper(), other], context={"realm_name": "ACME"})
    )
    assert (progress["sent"], progress["suppressed"], progress["pending"], progress["state"]) == (
        1,
        1,
        0,
        "done",
    )
    assert len(smtp_server.received_for(to)) == 1 and len(smtp_server.received_for(other)) == 1

    reset_id = api.send_email(realm, "password-reset", to, context=CONTEXT)
    reset = api.wait_for_result(reset_id)
    assert reset["status"] == "sent" and reset["suppressed"]["reason"] == "hard_bounce"
    assert reset["suppressed"]["job_id"] == job_id
    assert len(smtp_server.received_for(to)) == 2
    # The IAM hears of it: the `sent` outcome (and so its webhook) carries the flag.
    [sent] = [o for o in recorded if o.job_id == reset_id and o.event == "sent"]
    assert sent.details["suppressed"]["reason"] == "hard_bounce" and sent.to == to


def test_a_soft_bounce_over_lmtp_is_recorded_without_suppression(
    realm, smtp_server, bounce_address, lmtp_receiver, recorded
):
    to = f"full-{uuid.uuid4().hex[:6]}@example.com"
    job_id, mail_from = deliver(realm, smtp_server, bounce_address, to)
    send_bounce(lmtp_receiver, mail_from, postfix_dsn(mail_from, to, "<x@example.com>", status="4.2.2",
                                                        diagnostic="smtp; 452 4.2.2 mailbox full"), lmtp=True)  # fmt: skip
    status = job_status(job_id)
    assert (status["status"], status["bounce"]["kind"], status["bounce"]["status_code"]) == (
        "bounced",
        "soft",
        "4.2.2",
    )
    assert runtime().suppressions.get(realm, to) is None
    [bounced] = [o for o in recorded if o.event == "bounced"]
    assert (bounced.realm, bounced.job_id, bounced.to, bounced.reason, bounced.smtp_code) == (
        realm,
        job_id,
        to,
        "soft",
        452,
    )
    assert bounced.template == "password-reset" and bounced.details["status"] == "4.2.2"


def test_a_complaint_is_recorded_and_suppresses(realm, smtp_server, bounce_address, receiver):
    to = f"angry-{uuid.uuid4().hex[:6]}@example.com"
    job_id, mail_from = deliver(realm, smtp_server, bounce_address, to)
    send_bounce(receiver, mail_from, arf_complaint(mail_from, to, "<x@example.com>"))
    assert job_status(job_id)["status"] == "complained"
    assert runtime().outcomes.totals()[(realm, "complained")] == 1
    suppression = runtime().suppressions.get(realm, to)
    assert suppression is not None and suppression.reason == "complaint"


def test_without_verp_the_returned_message_id_maps_the_bounce(realm, smtp_server, bounce_address, receiver):
    to = f"old-{uuid.uuid4().hex[:6]}@example.com"
    job_id, mail_from = deliver(realm, smtp_server, bounce_address, to, verp=False)
    assert mail_from == bounce_address
    message_id = api.wait_for_result(job_id)["message_id"]
    send_bounce(receiver, bounce_address, postfix_dsn(bounce_address, to, message_id))
    assert job_status(job_id)["status"] == "bounced"


def test_a_forged_token_or_junk_is_kept_and_other_addresses_are_refused(
    realm, smtp_server, bounce_address, receiver
):
    to = f"x-{uuid.uuid4().hex[:6]}@example.com"
    job_id, _ = deliver(realm, smtp_server, bounce_address, to)
    local, _, domain = bounce_address.partition("@")
    forged = f"{local}+aaaaaaaaaaaaaaaa@{domain}"  # well-formed, not signed for any job
    before = len(runtime().bounces.redis.lrange(runtime().keys.unmapped_bounces(), 0, -1))
    send_bounce(receiver, forged, postfix_dsn(forged, to, "<x@example.com>"))
    send_bounce(receiver, bounce_address, b"\x00\xff garbage that is no report\r\n")
    kept = [json.loads(raw) for raw in runtime().redis.lrange(runtime().keys.unmapped_bounces(), 0, 1)]
    assert len(runtime().redis.lrange(runtime().keys.unmapped_bounces(), 0, -1)) >= before + 2
    assert {entry["rcpt"] for entry in kept} == {forged, bounce_address}
    assert job_status(job_id)["status"] == "sent"
    with (
        smtplib.SMTP("127.0.0.1", receiver, timeout=10) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        client.sendmail("", ["someone@example.org"], b"Subject: hi\r\n\r\nhello\r\n")


def test_suppressions_over_the_admin_api(api, admin_token, realm):
    from tests.support.http import new_token

    runtime().suppressions.add(realm, "Gone@Example.com", "hard_bounce", job_id="j1", status="5.1.1")
    with api.client(admin_token) as client:
        listed = client.get(f"/v1/realms/{realm}/suppressions").json()["suppressions"]
        assert [(e["address"], e["reason"], e["job_id"]) for e in listed] == [
            ("gone@example.com", "hard_bounce", "j1")
        ]
        assert client.delete(f"/v1/realms/{realm}/suppressions/gone@example.com").status_code == 204
        assert client.delete(f"/v1/realms/{realm}/suppressions/gone@example.com").status_code == 404
        assert client.get(f"/v1/realms/{realm}/suppressions").json()["suppressions"] == []
    with api.client(new_token("admin", realms=("another-realm",))) as client:
        assert client.get(f"/v1/realms/{realm}/suppressions").status_code == 404
    with api.client(new_token("producer")) as client:
        assert client.get(f"/v1/realms/{realm}/suppressions").status_code == 403


@pytest.mark.skipif(not exim.available(), reason="needs exim4 and root (a real MTA generating a DSN)")
def test_a_dsn_generated_by_exim_maps_to_its_verp_job(realm, smtp_server, bounce_address, receiver):
    to = f"nobody-{uuid.uuid4().hex[:6]}@example.org"
    job_id, mail_from = deliver(realm, smtp_server, bounce_address, to)
    [received] = smtp_server.received_for(to)

    tmp_path = Path(tempfile.mkdtemp(prefix="mailworker-exim-"))
    run = exim.bounce_with_exim(tmp_path, sender=mail_from, rcpt=to, message=received.data,
                                bounce_address=bounce_address, port=receiver)  # fmt: skip
    assert run.returncode == 0, run.stderr

    status = job_status(job_id)
    assert status["status"] == "bounced", (
        status,
        (tmp_path / "spool" / "mainlog").read_text(errors="replace"),
    )
    # Exim reports a local refusal with Status 5.0.0 and no Diagnostic-Code (its text part has the reason).
    assert (status["bounce"]["kind"], status["bounce"]["status_code"], status["bounce"]["recipient"]) == (
        "hard", "5.0.0", to)  # fmt: skip
    assert runtime().suppressions.get(realm, to) is not None
    shutil.rmtree(tmp_path)


def test_hostile_messages_over_smtp_get_250_and_are_kept(realm, smtp_server, bounce_address, receiver):
    runtime().store.save(realm, smtp_server.settings_dict(envelope_from=bounce_address, verp=True))
    before = runtime().redis.llen(runtime().keys.unmapped_bounces())
    # Lines over SMTP's 1000 characters are refused by the protocol layer itself (500), as they should.
    sendable = [m for m in HOSTILE if max(map(len, m.split(b"\n"))) < 998]
    assert len(sendable) >= 7
    with smtplib.SMTP("127.0.0.1", receiver, timeout=10) as client:
        for data in sendable:
            assert client.sendmail("", [bounce_address], data) == {}  # accepted: 250
        client.noop()  # still answering
    assert runtime().redis.llen(runtime().keys.unmapped_bounces()) >= min(before + len(sendable), 1000)
