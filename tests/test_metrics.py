"""GET /metrics (worker/http/metrics.py): the pure parts as tables, then the real app on uvicorn with a real
worker, Redis and SMTP server: who may scrape, jobs by outcome, SMTP errors, retries, the delivery histogram,
breakers, and an answer while the broker is down."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from config.keys import Keys
from config.names import PUBLISHED_AT, SEND_TASK
from tasks import api as mail
from tasks.stats import published_at
from tests.support.http import ApiServer, new_token, serve
from tests.support.smtp_server import SmtpTestServer
from worker.http.metric_families import Scrape, cumulative, families, oldest_age
from worker.outcomes.outcome import SENT, Outcome
from worker.outcomes.tallies import BUCKETS, INF, Batch, Figures, Tallies, bucket_of, parse, smtp_kind
from worker.runtime import runtime
from worker.smtp.failures import Kind, SmtpFailure

CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus_client's own parser: (name, labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: httpx.Client) -> Samples:
    reply = client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples_of(reply.text)


# ---- pure parts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "bucket"), [(0.0, "0.25"), (0.25, "0.25"), (0.26, "0.5"), (3.0, "5.0"),
                                                  (3600.0, "3600.0"), (3600.5, INF), (1e9, INF)])  # fmt: skip
def test_the_bucket_of_a_delivery_time(seconds: float, bucket: str) -> None:
    assert bucket_of(seconds) == bucket


@pytest.mark.parametrize(("per_bucket", "expected"), [
    ({}, [0.0] * (len(BUCKETS) + 1)),
    ({"0.25": 2, "5.0": 1, INF: 3}, [2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 6.0]),
    ({"1.0": 1, "3600.0": 4}, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0]),
])  # fmt: skip
def test_buckets_are_stored_apart_and_shown_cumulative(
    per_bucket: dict[str, int], expected: list[float]
) -> None:
    shown = cumulative(per_bucket)
    assert [le for le, _ in shown] == [*(repr(b) for b in BUCKETS), INF]
    assert [count for _, count in shown] == expected


@pytest.mark.parametrize(("now", "published", "age"), [(100.0, None, 0.0), (100.0, 40.0, 60.0),
                                                        (100.0, 100.5, 0.0), (100.0, 99.9996, 0.0)])  # fmt: skip
def test_the_oldest_message_s_age(now: float, published: float | None, age: float) -> None:
    assert oldest_age(now, published) == age


def _message(headers: dict[str, Any], body: Any, encoding: str = "base64") -> str:
    raw = json.dumps(body).encode()
    return json.dumps({"body": base64.b64encode(raw).decode() if encoding == "base64" else raw.decode(),
                       "content-type": "application/json", "headers": headers,
                       "properties": {"body_encoding": encoding}})  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None),
    (_message({PUBLISHED_AT: 1700000000.5, "task": SEND_TASK}, [[{"created_at": 1.0}], {}, {}]), 1700000000.5),
    # a producer of an older version: no header, the job's own creation time
    (_message({"task": SEND_TASK}, [[{"created_at": 1699999999.0}], {}, {}]), 1699999999.0),
    (_message({"task": SEND_TASK}, [[{"created_at": 1699999999.0}], {}, {}], encoding="utf-8"), 1699999999.0),
    (_message({"task": "mail.bulk.chunk"}, [["bulk-1", 0], {}, {}]), None),
    (_message({"task": SEND_TASK}, [[{"created_at": "yesterday"}], {}, {}]), None),
    ("not json", None),
    (json.dumps(["a list"]), None),
])  # fmt: skip
def test_when_a_stored_message_was_published(raw: str | None, expected: float | None) -> None:
    assert published_at(raw) == expected


def test_the_smtp_kind_behind_a_failure() -> None:
    refused = SmtpFailure(None, "connection refused", "connect", kind=Kind.REFUSED)
    try:
        try:
            raise refused
        except SmtpFailure:
            raise RuntimeError("the delivery failure") from None
    except RuntimeError as failure:
        assert smtp_kind(failure) is Kind.REFUSED  # its context, as deliver() raises it
    assert smtp_kind(SmtpFailure(550, "no such user", "rcpt")) is Kind.REPLY
    assert smtp_kind(RuntimeError("a template error")) is None


def test_the_counters_round_trip_through_one_hash(fake_redis: Any) -> None:
    tallies = Tallies(fake_redis, Keys("t"))
    pipe = fake_redis.pipeline(transaction=False)
    tallies.queue_delivery(pipe, "transactional", 0.1)
    tallies.queue_delivery(pipe, "transactional", 42.0)
    tallies.failed_attempt("acme", SmtpFailure(451, "try again"), retry=True)(pipe)
    pipe.execute()
    batch = Batch(retries=3, delays=[(2.0, 10)])
    batch.error(SmtpFailure(None, "timed out", kind=Kind.TIMEOUT), 2)
    batch.recipients.update(sent=10, dead_lettered=1, cancelled=0)
    tallies.write("beta", "bulk", batch)
    tallies.count_failure("acme", RuntimeError("not the server's"))  # nothing to count
    assert tallies.read() == Figures(
        retries={"acme": 1, "beta": 3},
        smtp_errors={("acme", "reply"): 1, ("beta", "timeout"): 2},
        buckets={"transactional": {"0.25": 1, "60.0": 1}, "bulk": {"2.5": 10}},
        sums={"transactional": 42.1, "bulk": 20.0},
        bulk={("beta", "sent"): 10, ("beta", "dead_lettered"): 1},
    )


def test_a_field_of_another_shape_is_skipped() -> None:
    assert parse({"retry\tacme": "2", "retry": "1", "newer\tx\ty": "5"}) == Figures(retries={"acme": 2})


def _render(scrape_: Scrape) -> Samples:
    from prometheus_client import generate_latest

    class Fixed:
        def collect(self) -> Any:
            return families(scrape_)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    return samples_of(generate_latest(registry).decode())


def test_a_part_that_did_not_answer_is_left_out_not_zero() -> None:
    broker_down = _render(Scrape(now=100.0, jobs={("acme", "sent"): 3}, tallies=Figures(), breakers={}))
    assert value(broker_down, "mailworker_up", part="broker") == 0.0
    assert value(broker_down, "mailworker_up", part="store") == 1.0
    assert value(broker_down, "mailworker_jobs_total", realm="acme", outcome="sent") == 3.0
    assert not any(name.startswith("mailworker_queue") for name, _ in broker_down)
    store_down = _render(Scrape(now=100.0, queues={"transactional": 2, "callbacks": 5},
                                oldest={"transactional": 40.0}, webhook_queue="callbacks"))  # fmt: skip
    assert value(store_down, "mailworker_up", part="store") == 0.0
    assert value(store_down, "mailworker_queue_oldest_age_seconds", queue="transactional") == 60.0
    assert value(store_down, "mailworker_webhook_backlog") == 5.0
    assert not any(name.startswith("mailworker_jobs") for name, _ in store_down)


# ---- the real app ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_who_may_scrape(api: ApiServer, admin_token: str, producer_token: str, realm: str) -> None:
    assert api.client().get("/metrics").status_code == 401
    assert api.client(producer_token).get("/metrics").status_code == 403
    limited = new_token("admin", (realm,))
    reply = api.client(limited).get("/metrics")
    assert reply.status_code == 403 and "not limited to realms" in reply.json()["error"]
    samples = scrape(api.client(admin_token))
    for queue in ("transactional", "bulk", "control"):
        assert ("mailworker_queue_depth", (("queue", queue),)) in samples
        assert ("mailworker_queue_oldest_age_seconds", (("queue", queue),)) in samples
    assert (
        value(samples, "mailworker_up", part="broker") == value(samples, "mailworker_up", part="store") == 1.0
    )


@pytest.mark.integration
def test_jobs_errors_retries_and_delivery_times_after_real_deliveries(
    api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    client = api.client(admin_token)
    before = scrape(client)
    refused = f"gone-{uuid.uuid4().hex[:6]}@example.com"
    smtp_server.reject_recipient(refused, "550 5.1.1 no such user")
    sent = mail.wait_for_result(
        mail.send_email(realm, "password-reset", "alice@example.com", context=CONTEXT)
    )
    dead = mail.wait_for_result(mail.send_email(realm, "password-reset", refused, context=CONTEXT))
    smtp_server.fail_next("451 4.3.0 try again", times=1)
    retried = mail.wait_for_result(
        mail.send_email(realm, "password-reset", "bob@example.com", context=CONTEXT)
    )
    assert (sent["status"], dead["status"], retried["status"]) == ("sent", "dead-lettered", "sent")
    after = scrape(client)
    assert value(after, "mailworker_jobs_total", realm=realm, outcome="sent") == 2.0
    assert value(after, "mailworker_jobs_total", realm=realm, outcome="dead_lettered") == 1.0
    assert value(after, "mailworker_smtp_errors_total", realm=realm, kind="reply") == 2.0  # the 550, the 451
    assert value(after, "mailworker_retries_total", realm=realm) == 1.0

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The histogram is per queue (shared with other tests' realms): this test's two deliveries at least,
    # each in a bucket, their seconds in the sum; the +Inf bucket is the count.
    assert grew("mailworker_delivery_seconds_count", queue="transactional") >= 2.0
    assert grew("mailworker_delivery_seconds_bucket", queue="transactional", le=INF) == grew(
        "mailworker_delivery_seconds_count", queue="transactional"
    )
    assert grew("mailworker_delivery_seconds_bucket", queue="transactional", le="30.0") >= 2.0
    assert grew("mailworker_delivery_seconds_sum", queue="transactional") > 0.0


@pytest.mark.integration
def test_an_open_breaker_shows(
    api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    client = api.client(admin_token)
    assert value(scrape(client), "mailworker_breaker_open", realm=realm) == 0.0
    breaker = runtime().breaker
    while not breaker.failure(realm, "127.0.0.1:1", "connection refused"):
        pass
    assert value(scrape(client), "mailworker_breaker_open", realm=realm) == 1.0
    breaker.success(realm)
    assert value(scrape(client), "mailworker_breaker_open", realm=realm) == 0.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
def test_metrics_answer_while_the_broker_is_down(admin_token: str, realm: str) -> None:
    rt = runtime()
    rt.outcomes.record(Outcome(SENT, realm, "job-1"))
    settings = rt.settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{_closed_port()}/0"})
    from worker.http.app import create_app

    server = serve(create_app(settings, rt))
    down = next(server)
    try:
        samples = scrape(down.client(admin_token))
    finally:
        server.close()
    assert value(samples, "mailworker_up", part="broker") == 0.0
    assert value(samples, "mailworker_up", part="store") == 1.0
    assert not any(name == "mailworker_queue_depth" for name, _ in samples)
    assert (
        value(samples, "mailworker_jobs_total", realm=realm, outcome=SENT) == 1.0
    )  # the store's part is there


@pytest.mark.integration
def test_bulk_throughput_errors_and_delivery_times(
    api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    smtp_server.reject_recipient("u7@example.com", "550 5.1.1 no such user")
    client = api.client(admin_token)
    before = scrape(client)
    job_id = mail.send_bulk(realm, "email-test", [f"u{i}@example.com" for i in range(30)], chunk_size=10)
    assert (mail.wait_for_bulk(job_id)["sent"], mail.wait_for_bulk(job_id)["failed"]) == (29, 1)
    after = scrape(client)
    assert value(after, "mailworker_bulk_recipients_total", realm=realm, outcome="sent") == 29.0
    assert value(after, "mailworker_bulk_recipients_total", realm=realm, outcome="dead_lettered") == 1.0
    assert value(after, "mailworker_smtp_errors_total", realm=realm, kind="reply") == 1.0
    assert value(after, "mailworker_jobs_total", realm=realm, outcome="sent") == 29.0
    count = ("mailworker_delivery_seconds_count", {"queue": "bulk"})
    assert value(after, count[0], **count[1]) - value(before, count[0], **count[1]) >= 29.0
