"""Delivery webhooks, the parts without a worker: the pure decisions as tables, the endpoint store (URL
rules, sealed secret, masked everywhere), and what recording an outcome costs in round trips to Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
import redis

from config.crypto import MASK, SecretBox, new_key
from config.errors import InvalidInput, NotFound
from config.keys import Keys
from tests.support.counting_redis import CountingRedis
from worker.bulk.progress import BulkProgress, finished_outcome
from worker.jobs.stats import Stats
from worker.outcomes.outcome import BULK_FINISHED, DEAD_LETTERED, EVENTS, SENT, Outcome
from worker.outcomes.record import Outcomes
from worker.outcomes.webhooks.decisions import (
    DEAD,
    DONE,
    GONE_STEP,
    RETRY,
    Schedule,
    check_events,
    next_step,
    payload,
    slot_wait,
    subscribed,
    wanted,
    webhook_id,
)
from worker.outcomes.webhooks.endpoints import Endpoint, EndpointCache, EndpointStore
from worker.outcomes.webhooks.fanout import Fanout
from worker.outcomes.webhooks.signing import SECRET_PREFIX, new_secret, signed_headers

DAY = 86_400.0


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side of the Standard Webhooks spec, written from the spec, not from our signer."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = b".".join([headers["webhook-id"].encode(), headers["webhook-timestamp"].encode(), body])
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    return any(hmac.compare_digest(expected, sig.split(",", 1)[1].encode())
               for sig in headers["webhook-signature"].split(" ") if sig.startswith("v1,"))  # fmt: skip


def test_a_signature_verifies_with_the_spec_and_not_after_a_change() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX) and len(base64.b64decode(secret[len(SECRET_PREFIX) :])) == 32
    body = b'{"type":"sent"}'
    headers = signed_headers(secret, "msg_1", 1_700_000_000, body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == "1700000000"
    assert verify(secret, headers, body)
    assert not verify(secret, headers, b'{"type":"dropped"}')
    assert not verify(new_secret(), headers, body)
    assert not verify(secret, {**headers, "webhook-timestamp": "1700000001"}, body)


@pytest.mark.parametrize(
    ("status", "attempt", "age", "action", "delay"),
    [
        (200, 1, 0, DONE, 0),
        (204, 5, 3600, DONE, 0),
        (299, 1, 0, DONE, 0),
        (410, 1, 0, GONE_STEP, 0),
        (500, 1, 0, RETRY, 30),
        (500, 2, 0, RETRY, 60),
        (None, 3, 0, RETRY, 120),
        (404, 7, 0, RETRY, 1920),
        (500, 8, 0, RETRY, 3600),
        (500, 30, 0, RETRY, 3600),  # capped at an hour
        (301, 1, 0, RETRY, 30),  # a redirect is not followed: tried again, as any other non-2xx
        (500, 20, DAY - 3600, RETRY, 3600),
        (500, 20, DAY - 3599, DEAD, 0),
        (None, 1, DAY, DEAD, 0),
    ],
)
def test_what_follows_an_attempt(
    status: int | None, attempt: int, age: float, action: str, delay: float
) -> None:
    step = next_step(status, attempt, first_at=1000.0, now=1000.0 + age)
    assert (step.action, step.delay) == (action, delay)


@pytest.mark.parametrize(("deferrals", "wait"), [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (50, 1.0)])
def test_a_busy_endpoint_is_waited_for_briefly_then_longer(deferrals: int, wait: float) -> None:
    assert slot_wait(deferrals) == pytest.approx(wait)


def test_the_default_schedule_tries_for_about_a_day() -> None:
    schedule, waited, attempts = Schedule(), 0.0, 1
    while waited + schedule.delay(attempts) <= schedule.give_up_after:
        waited += schedule.delay(attempts)
        attempts += 1
    assert 20 <= attempts <= 30 and DAY - 3600 <= waited <= DAY


@pytest.mark.parametrize(
    ("given", "chosen"),
    [
        (["sent"], ("sent",)),
        ([" dead_lettered", "sent ", "sent"], ("sent", "dead_lettered")),
        (list(EVENTS), EVENTS),
        (["bulk.finished", "expired"], ("expired", "bulk.finished")),
    ],
)
def test_event_types_are_checked(given: list[str], chosen: tuple[str, ...]) -> None:
    assert check_events("events", given) == chosen


@pytest.mark.parametrize("given", [[], [""], ["delivered"], ["sent", "test"], ["SENT"]])
def test_unknown_event_types_are_refused_naming_the_field(given: list[str]) -> None:
    with pytest.raises(InvalidInput) as error:
        check_events("events", given)
    assert error.value.problems[0][0] == "events" and "bulk.finished" in str(error.value)


def _endpoint(id: str, events: tuple[str, ...], disabled: str | None = None) -> Endpoint:
    return Endpoint(id, "acme", "https://hooks.example.com/", events, 0.0, disabled)


@pytest.mark.parametrize(
    ("outcome", "wants"),
    [
        (Outcome(SENT, "acme", "job-1"), True),
        (
            Outcome(SENT, "acme", "bulk-1", count=100, bulk=True),
            False,
        ),  # a chunk's counts: not one per recipient
        (Outcome(DEAD_LETTERED, "acme", "bulk-1", count=3, bulk=True), False),
        (Outcome(BULK_FINISHED, "acme", "bulk-1", bulk=True), True),
    ],
)
def test_bulk_chunks_are_reported_once_by_bulk_finished(outcome: Outcome, wants: bool) -> None:
    assert wanted(outcome) is wants


def test_only_enabled_endpoints_subscribed_to_the_event_get_it() -> None:
    a, b, c = _endpoint("a", ("sent",)), _endpoint("b", ("dead_lettered",)), _endpoint("c", ("sent",), "410")
    assert subscribed([a, b, c], SENT) == [a] and subscribed([a, b, c], DEAD_LETTERED) == [b]


def test_the_payload_names_the_job_and_the_reply_never_the_context() -> None:
    outcome = Outcome(DEAD_LETTERED, "acme", "job-1", "password-reset", "alice@example.com", "permanent",
                      550, "5.1.1 no such user", at=1_700_000_000.0,
                      details={"attempts": 1, "nested": {"link": "https://x/reset?k=1"}})  # fmt: skip
    assert payload(outcome) == {"type": "dead_lettered", "timestamp": "2023-11-14T22:13:20Z", "data": {
        "job_id": "job-1", "realm": "acme", "template": "password-reset", "to": "alice@example.com",
        "outcome": "dead_lettered", "reason": "permanent", "smtp_code": 550, "smtp_reply": "5.1.1 no such user",
        "at": "2023-11-14T22:13:20Z", "attempts": 1}}  # fmt: skip


def test_bulk_finished_carries_the_counts() -> None:
    progress = BulkProgress(job_id="bulk-1", realm="acme", template="newsletter", state="done", total=10,
                            sent=8, failed=1, cancelled=1, suppressed=0, pending=0, rate=1.0, chunks=1, chunks_done=1,
                            created_at=1.0, started_at=2.0, finished_at=3.0, error=None)  # fmt: skip
    data = payload(finished_outcome(progress))["data"]
    assert data["outcome"] == BULK_FINISHED and "count" not in data
    assert (data["state"], data["total"], data["sent"], data["failed"], data["cancelled"]) == (
        "done",
        10,
        8,
        1,
        1,
    )


def test_the_webhook_id_is_stable_per_outcome_and_endpoint() -> None:
    one = Outcome(SENT, "acme", "job-1", to="a@example.com", at=1.0)
    again = Outcome(SENT, "acme", "job-1", to="a@example.com", at=2.0)  # the same ending, recorded twice
    assert webhook_id("wh_a", one) == webhook_id("wh_a", again)
    assert webhook_id("wh_b", one) != webhook_id("wh_a", one)
    assert webhook_id("wh_a", Outcome(DEAD_LETTERED, "acme", "job-1", to="a@example.com")) != webhook_id(
        "wh_a", one
    )


# ---- the store ----------------------------------------------------------------------------------------


@pytest.fixture
def endpoints(real_redis: redis.Redis, key_prefix: str) -> EndpointStore:
    box = SecretBox([new_key()])
    return EndpointStore(real_redis, Keys(key_prefix), lambda: box, allow_private=False)


@pytest.mark.parametrize(
    ("url", "allow_private", "refused"),
    [
        ("https://hooks.example.com/mail", False, None),
        ("https://hooks.example.com:8443/mail?realm=acme", False, None),
        ("http://hooks.example.com/mail", False, "must be an https:// URL"),
        ("http://hooks.example.com/mail", True, "must be an https:// URL"),  # http only to this machine
        ("https://127.0.0.1/hooks", False, "loopback"),
        ("http://127.0.0.1:8080/hooks", False, "loopback"),
        ("http://127.0.0.1:8080/hooks", True, None),
        ("http://localhost:8080/hooks", True, None),
        ("https://10.0.0.8/hooks", False, "private"),
        ("https://169.254.169.254/latest", False, "link-local"),
        ("https://[::1]/hooks", False, "loopback"),
        ("https://user:pw@hooks.example.com/", False, "user name or password"),
        ("ftp://hooks.example.com/", False, "https://"),
        ("https:///nohost", False, "no host"),
    ],
)
def test_endpoint_urls_follow_the_url_rules(endpoints: EndpointStore, url: str, allow_private: bool,
                                            refused: str | None) -> None:  # fmt: skip
    endpoints.allow_private = allow_private
    if refused is None:
        endpoint, _ = endpoints.add("acme", url, ["sent"])
        assert endpoints.get(endpoint.id).url == url
        return
    with pytest.raises(InvalidInput) as error:
        endpoints.add("acme", url, ["sent"])
    assert error.value.problems[0][0] == "url" and refused in str(error.value)
    assert endpoints.list("acme") == []


def test_the_secret_is_stored_sealed_and_shown_masked(endpoints: EndpointStore, real_redis: redis.Redis,
                                                      key_prefix: str) -> None:  # fmt: skip
    endpoint, secret = endpoints.add("acme", "https://hooks.example.com/mail", ["sent", "dead_lettered"])
    raw_key = secret.removeprefix(SECRET_PREFIX)
    for key in real_redis.scan_iter(match=f"{key_prefix}*"):
        stored = json.dumps({str(k): str(v) for k, v in real_redis.hgetall(key).items()})
        assert raw_key not in stored and secret not in stored
    assert endpoints.secret(endpoint.id) == (endpoint, secret)
    assert endpoint.public()["secret"] == MASK and secret not in json.dumps(
        endpoints.get(endpoint.id).public()
    )
    assert [e.id for e in endpoints.list()] == [endpoint.id]


def test_a_sealed_secret_does_not_open_for_another_url(endpoints: EndpointStore, real_redis: redis.Redis,
                                                       key_prefix: str) -> None:  # fmt: skip
    from config.crypto import SealBroken

    endpoint, _ = endpoints.add("acme", "https://hooks.example.com/mail", ["sent"])
    key = Keys(key_prefix).webhooks("acme")
    record = json.loads(str(real_redis.hget(key, endpoint.id)))
    real_redis.hset(key, endpoint.id, json.dumps({**record, "url": "https://evil.example.net/"}))
    with pytest.raises(SealBroken):
        endpoints.secret(endpoint.id)


def test_remove_and_unknown_ids(endpoints: EndpointStore) -> None:
    endpoint, _ = endpoints.add("acme", "https://hooks.example.com/mail", ["sent"])
    assert not endpoints.remove(endpoint.id, realm="other")
    assert endpoints.remove(endpoint.id) and not endpoints.remove(endpoint.id)
    with pytest.raises(NotFound):
        endpoints.get(endpoint.id)


# ---- the hot path --------------------------------------------------------------------------------------


def test_recording_costs_no_round_trip_more_for_a_realm_without_endpoints(
    redis_url: str, key_prefix: str
) -> None:
    client = CountingRedis.from_url(redis_url, decode_responses=True)
    keys, box = Keys(key_prefix), SecretBox([new_key()])
    store = EndpointStore(client, keys, lambda: box, allow_private=False)
    published: list[tuple[str, str, dict[str, Any]]] = []
    plain = Outcomes(client, keys, Stats(client, keys))
    hooked = Outcomes(client, keys, Stats(client, keys),
                      notify=Fanout(EndpointCache(store, ttl=60.0), lambda *m: published.append(m)))  # fmt: skip

    def trips(outcomes: Outcomes, realm: str) -> int:
        before = client.round_trips
        for n in range(100):
            outcomes.record(Outcome(SENT, realm, f"job-{n}", "password-reset", f"u{n}@example.com"))
        return client.round_trips - before

    assert trips(plain, "quiet") == 100  # the counts: one pipeline per outcome
    assert trips(hooked, "quiet") == 101  # + the set of realms with endpoints, once per cache period
    assert trips(hooked, "quiet") == 100 and not published
    endpoint, _ = store.add("loud", "https://hooks.example.com/mail", ["sent"])
    fresh = Outcomes(client, keys, Stats(client, keys),
                     notify=Fanout(EndpointCache(store, ttl=60.0), lambda *m: published.append(m)))  # fmt: skip
    assert trips(fresh, "quiet") == 101  # another realm's endpoints cost the quiet realm nothing
    assert trips(fresh, "loud") == 101 and len(published) == 100  # + its endpoints, once per period
    assert {p[0] for p in published} == {endpoint.id} and len({p[1] for p in published}) == 100
    print(
        "\nFIGURES webhooks hot path: 100 outcomes = 100 round trips without endpoints, 101 with "
        "(first use), 100 messages published"
    )


def test_a_broker_that_refuses_the_webhook_does_not_fail_the_mails_ending(
    fake_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(outcome: Outcome) -> None:
        raise ConnectionError("the broker is down")

    keys = Keys("t")
    outcomes = Outcomes(fake_redis, keys, Stats(fake_redis, keys), notify=broken)
    outcomes.record(Outcome(SENT, "acme", "job-1"))
    assert outcomes.totals() == {("acme", SENT): 1}
    assert "webhooks for sent of job job-1 not queued" in caplog.text


def test_secrets_rotate_reseals_the_signing_secrets_with_the_new_key(
    real_redis: redis.Redis, key_prefix: str
) -> None:
    old, new = new_key(), new_key()
    boxes = {"box": SecretBox([old])}
    store = EndpointStore(real_redis, Keys(key_prefix), lambda: boxes["box"], allow_private=False)
    endpoint, secret = store.add("acme", "https://hooks.example.com/mail", ["sent"])
    boxes["box"] = SecretBox([new, old])  # the rotation procedure: the new key first, the old one kept
    assert store.reseal() == (1, ())
    boxes["box"] = SecretBox([new])  # ... then the old key removed
    assert store.secret(endpoint.id) == (endpoint, secret)
    boxes["box"] = SecretBox([new_key()])  # a key that opens nothing: reported, left as it is
    count, problems = store.reseal()
    assert count == 0 and len(problems) == 1 and endpoint.id in problems[0]
