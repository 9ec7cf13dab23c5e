"""Delivery webhooks end to end: a job delivered (or refused with 550) by the real SMTP server, the real
Celery worker recording the outcome, the webhook on the `callbacks` queue, and a real receiver on
127.0.0.1 that checks the Standard Webhooks signature. Then retries, the dead letter and its requeue, the
secret nowhere in Redis or the broker, and the CLI and the admin API."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from config.crypto import MASK
from tasks import api
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from tests.support.webhook_receiver import Request, WebhookReceiver
from tests.test_webhooks import verify
from worker.cli import main
from worker.outcomes.webhooks.decisions import Schedule
from worker.runtime import runtime

pytestmark = pytest.mark.integration

CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/reset?k=1", "link_expiration": 30}
FAST = Schedule(first_delay=0.2, max_delay=0.5, give_up_after=30.0)


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Iterator[None]:
    rt = runtime()
    cache, delivery = rt.outcomes.notify.cache, rt.webhook_delivery  # type: ignore[union-attr]
    ttl, schedule, pause = cache.ttl, delivery.schedule, delivery.pause_s
    cache.ttl, delivery.schedule, delivery.pause_s = (
        0.0,
        FAST,
        0.5,
    )  # see new endpoints at once; quick retries
    yield
    cache.ttl, delivery.schedule, delivery.pause_s = ttl, schedule, pause


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server
        for endpoint in runtime().webhooks.list():  # its deliveries still queued are dropped, not retried
            if endpoint.url == server.url:
                runtime().webhooks.remove(endpoint.id)


def address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


def of_job(job_id: str) -> Any:
    return lambda r: r.json.get("data", {}).get("job_id") == job_id


def check_signed(request: Request, secret: str) -> None:
    assert verify(secret, request.headers, request.body)
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert (
        request.headers["webhook-id"].startswith("msg_")
        and request.headers["content-type"] == "application/json"
    )


def test_a_delivered_job_and_a_550_reach_the_receiver_signed(realm: str, smtp_server: SmtpTestServer,
                                                             receiver: WebhookReceiver) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    _endpoint, secret = runtime().webhooks.add(realm, receiver.url, ["sent", "dead_lettered"])

    sent_to, refused_to = address(), address()
    sent_id = api.send_email(realm, "password-reset", sent_to, context=CONTEXT)
    assert api.wait_for_result(sent_id)["status"] == "sent"
    smtp_server.fail_next("550 5.1.1 no such user", at="rcpt")
    dead_id = api.send_email(realm, "password-reset", refused_to, context=CONTEXT)
    assert api.wait_for_result(dead_id)["status"] == "dead-lettered"

    [sent] = receiver.wait_for(of_job(sent_id))
    check_signed(sent, secret)
    assert sent.json["type"] == "sent" and sent.json["data"]["to"] == sent_to
    assert sent.json["data"]["realm"] == realm and sent.json["data"]["template"] == "password-reset"
    [dead] = receiver.wait_for(of_job(dead_id))
    check_signed(dead, secret)
    assert dead.json["type"] == "dead_lettered" and dead.json["data"]["smtp_code"] == 550
    assert dead.json["data"]["reason"] == "permanent" and "no such user" in dead.json["data"]["smtp_reply"]
    for request in (sent, dead):  # never the mail's context, never the secret
        assert "reset?k=1" not in request.body.decode() and secret not in request.body.decode()
    assert sent.headers["webhook-id"] != dead.headers["webhook-id"]


def test_an_unsubscribed_event_or_another_realm_gets_nothing(realm: str, smtp_server: SmtpTestServer,
                                                            receiver: WebhookReceiver) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    runtime().webhooks.add(realm, receiver.url, ["dead_lettered"])
    runtime().store.save(realm + "-b", smtp_server.settings_dict())
    job_id = api.send_email(realm, "password-reset", address(), context=CONTEXT)
    other = api.send_email(realm + "-b", "password-reset", address(), context=CONTEXT)
    api.wait_for_result(job_id), api.wait_for_result(other)
    # A sent job's webhook would have been queued when the job ended: the callbacks queue drains in well under this.
    time.sleep(1.5)
    assert receiver.received() == []


def test_a_500_is_retried_with_the_same_webhook_id_until_a_2xx(realm: str, smtp_server: SmtpTestServer,
                                                               receiver: WebhookReceiver) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    _, secret = runtime().webhooks.add(realm, receiver.url, ["sent"])
    receiver.answer(500, times=2)
    job_id = api.send_email(realm, "password-reset", address(), context=CONTEXT)
    api.wait_for_result(job_id)
    tries = receiver.wait_for(of_job(job_id), count=3)
    assert [t.status for t in tries] == [500, 500, 204]
    assert len({t.headers["webhook-id"] for t in tries}) == 1
    assert all(verify(secret, t.headers, t.body) for t in tries)
    time.sleep(1.0)
    assert len(receiver.received(of_job(job_id))) == 3  # delivered: not sent again


def test_exhausted_retries_end_as_a_dead_letter_that_requeue_sends_again(
    realm: str, smtp_server: SmtpTestServer, receiver: WebhookReceiver
) -> None:
    rt = runtime()
    rt.webhook_delivery.schedule = Schedule(first_delay=0.2, max_delay=0.3, give_up_after=1.0)
    rt.store.save(realm, smtp_server.settings_dict())
    _endpoint, _ = rt.webhooks.add(realm, receiver.url, ["sent"])
    receiver.status = 503
    job_id = api.send_email(realm, "password-reset", address(), context=CONTEXT)
    api.wait_for_result(job_id)
    first = receiver.wait_for(of_job(job_id))[0]
    webhook_id = first.headers["webhook-id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not rt.dead_letters.list(realm=realm, reason="webhook"):
        time.sleep(0.1)
    letter = rt.dead_letters.get(webhook_id)
    assert (letter.reason, letter.task, letter.to) == ("webhook", "mail.webhook", receiver.url)
    assert letter.attempts >= 2 and "503" in letter.error
    tries = len(receiver.received(of_job(job_id)))

    receiver.status = 204
    assert main(["dead", "requeue", webhook_id]) == 0
    again = receiver.wait_for(lambda r: of_job(job_id)(r) and r.status == 204)
    assert (
        again[0].headers["webhook-id"] == webhook_id and len(receiver.received(of_job(job_id))) == tries + 1
    )


def test_a_410_disables_the_endpoint(
    realm: str, smtp_server: SmtpTestServer, receiver: WebhookReceiver
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    endpoint, _ = runtime().webhooks.add(realm, receiver.url, ["sent"])
    receiver.status = 410
    job_id = api.send_email(realm, "password-reset", address(), context=CONTEXT)
    api.wait_for_result(job_id)
    receiver.wait_for(of_job(job_id))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not runtime().webhooks.get(endpoint.id).disabled:
        time.sleep(0.05)
    assert "410" in str(runtime().webhooks.get(endpoint.id).disabled)
    second = api.send_email(realm, "password-reset", address(), context=CONTEXT)
    api.wait_for_result(second)
    time.sleep(1.0)
    assert receiver.received(of_job(second)) == [] and len(receiver.received(of_job(job_id))) == 1


def test_a_bulk_job_is_reported_once_by_bulk_finished(realm: str, smtp_server: SmtpTestServer,
                                                      receiver: WebhookReceiver) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    runtime().webhooks.add(realm, receiver.url, list(("sent", "dead_lettered", "bulk.finished")))
    recipients = [address() for _ in range(25)]
    job_id = api.send_bulk(realm, "email-test", recipients, context={"realm_name": "ACME"}, chunk_size=10)
    [finished] = receiver.wait_for(of_job(job_id), timeout=60)
    assert finished.json["type"] == "bulk.finished"
    data = finished.json["data"]
    assert (data["state"], data["total"], data["sent"], data["failed"]) == ("done", 25, 25, 0)
    time.sleep(1.0)
    assert len(receiver.received()) == 1  # not one per recipient, not one per chunk


def _scan_for(secret: str, *also: str) -> list[str]:
    """Every key of this test session, the broker's queues and unacked messages included, holding `secret`
    (or its key part): read as bytes, since bitmaps and pickled nothing are not text."""
    import redis

    rt = runtime()
    client = redis.Redis.from_url(rt.settings.store_url)
    needles = (secret.encode(), secret.split("_", 1)[1].encode()) if secret else ()
    needles += tuple(text.encode() for text in also)
    found = []
    for key in client.scan_iter(match=f"{rt.keys.prefix}*", count=1000):
        kind = client.type(key)
        values: list[Any] = []
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        if any(needle in (value or b"") for value in values for needle in needles):
            found.append(key.decode())
    client.close()
    return found


def test_the_secret_is_never_in_redis_the_broker_or_any_output_after_creation(
    realm: str, smtp_server: SmtpTestServer, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    assert (
        main(["webhook", "add", "--realm", realm, "--url", receiver.url, "--events", "sent", "--json"]) == 0
    )
    created = json.loads(capsys.readouterr().out)
    secret, endpoint_id = created["secret"], created["id"]
    assert secret.startswith("whsec_")
    receiver.mode, receiver.delay = "slow", 1.0  # deliveries in the broker and in flight while we scan
    job_ids = [api.send_email(realm, "password-reset", address(), context=CONTEXT) for _ in range(5)]
    for job_id in job_ids:
        api.wait_for_result(job_id)
    broker_seen = _scan_for(secret)
    # The scan reaches the broker's messages: the deliveries' webhook payloads (the job ids) are there now.
    assert any(key.endswith(("unacked", ":callbacks")) for key in _scan_for("", *job_ids)), _scan_for(
        "", *job_ids
    )
    receiver.wait_for(lambda r: r.json["data"].get("job_id") in job_ids, count=5, timeout=30)
    assert broker_seen == [] and _scan_for(secret) == []

    assert main(["webhook", "list", "--realm", realm]) == 0
    listing = capsys.readouterr().out
    assert endpoint_id in listing and MASK in listing and secret not in listing
    assert main(["webhook", "list", "--json"]) == 0
    assert secret not in capsys.readouterr().out
    receiver.mode = "ok"
    assert main(["webhook", "test", endpoint_id]) == 0
    assert "answered 204" in capsys.readouterr().out
    [ping] = receiver.wait_for(lambda r: r.json["type"] == "test")
    assert verify(secret, ping.headers, ping.body) and ping.json["data"]["endpoint_id"] == endpoint_id
    receiver.status = 500
    assert main(["webhook", "test", endpoint_id]) == 1
    assert "500" in capsys.readouterr().out
    assert main(["webhook", "remove", endpoint_id]) == 0
    assert main(["webhook", "remove", endpoint_id]) == 3
    assert main(["webhook", "test", endpoint_id]) == 3
    capsys.readouterr()


def test_cli_refuses_bad_input_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "webhook",
                "add",
                "--realm",
                "acme",
                "--url",
                "https://hooks.example.com/",
                "--events",
                "sent,nope",
            ]
        )
        == 1
    )
    assert "events: unknown event nope" in capsys.readouterr().err
    assert (
        main(["webhook", "add", "--realm", "acme", "--url", "http://hooks.example.com/", "--events", "sent"])
        == 1
    )
    assert "url: must be an https:// URL" in capsys.readouterr().err


def test_the_admin_api(api: ApiServer, admin_token: str, realm: str, receiver: WebhookReceiver) -> None:
    other = new_token("admin", realms=("some-other-realm",))
    with api.client(admin_token) as client:
        created = client.post(f"/v1/realms/{realm}/webhooks", json={"url": receiver.url, "events": ["sent"]})
        assert created.status_code == 201, created.text
        body = created.json()
        secret, endpoint_id = body["secret"], body["id"]
        assert secret.startswith("whsec_") and body["events"] == ["sent"]
        listing = client.get(f"/v1/realms/{realm}/webhooks")
        assert listing.status_code == 200 and secret not in listing.text
        assert listing.json()["webhooks"][0]["secret"] == MASK
        bad = client.post(f"/v1/realms/{realm}/webhooks", json={"url": receiver.url, "events": ["nope"]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "events"
        bad = client.post(
            f"/v1/realms/{realm}/webhooks", json={"url": "http://hooks.example.com/", "events": ["sent"]}
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "url"
        bad = client.post(f"/v1/realms/{realm}/webhooks", json={"events": ["sent"]})
        assert bad.status_code == 422 and "url" in bad.text
        tested = client.post(f"/v1/realms/{realm}/webhooks/{endpoint_id}/test")
        assert tested.status_code == 200 and tested.json() == {"ok": True, "http_status": 204, "error": ""}
        assert verify(secret, receiver.received()[-1].headers, receiver.received()[-1].body)
        assert client.delete(f"/v1/realms/other-{realm}/webhooks/{endpoint_id}").status_code == 404
    with api.client(other) as client:  # a token for other realms sees neither the realm nor its endpoints
        assert client.get(f"/v1/realms/{realm}/webhooks").status_code == 404
        assert client.post(f"/v1/realms/{realm}/webhooks/{endpoint_id}/test").status_code == 404
    with api.client(admin_token) as client:
        assert client.delete(f"/v1/realms/{realm}/webhooks/{endpoint_id}").status_code == 200
        assert client.delete(f"/v1/realms/{realm}/webhooks/{endpoint_id}").status_code == 404


def test_a_dsn_for_a_delivered_job_fires_the_bounced_webhook(realm: str, smtp_server: SmtpTestServer,
                                                             receiver: WebhookReceiver) -> None:  # fmt: skip
    from tests.support.bounce_samples import postfix_dsn
    from tests.test_bounces_e2e import deliver, free_port, realm_fields, send_bounce
    from worker.bounces.receiver import AddressBook, BounceHandler, start

    _, secret = runtime().webhooks.add(realm, receiver.url, ["bounced"])
    to = address()
    job_id, mail_from = deliver(realm, smtp_server, f"bounces-{uuid.uuid4().hex[:8]}@example.com", to)
    port = free_port()
    controller = start(BounceHandler(AddressBook(realm_fields), runtime().bounces), "127.0.0.1", port)
    try:
        send_bounce(port, mail_from, postfix_dsn(mail_from, to, "<someone-else@example.com>"))
    finally:
        controller.stop()
    [bounced] = receiver.wait_for(of_job(job_id))
    check_signed(bounced, secret)
    data = bounced.json["data"]
    assert bounced.json["type"] == "bounced" and (data["to"], data["reason"]) == (to, "hard")
    assert data["template"] == "password-reset" and "reset?k=1" not in bounced.body.decode()
