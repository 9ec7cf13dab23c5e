"""The ingest consumer's decisions, as tables: which try of an entry this is, whether it killed the consumer
twice, which idempotency key it is enqueued with, how an unexpected exception is worded. No Redis."""

from __future__ import annotations

from typing import Any

import pytest

from worker.ingest import MAX_TRIES, InHand, describe, enqueue, idempotency_key_for, take_up

A, B = "a" * 64, "b" * 64  # digests


@pytest.mark.parametrize(
    "record, digest, counted, expected",
    [
        # no record: the first try, with a new token
        (None, A, True, InHand(A, "new", 1)),
        # the record of another entry (left by an older version, or several leftovers): a first try too
        (InHand(B, "old", 2), A, True, InHand(A, "new", 1)),
        # the same entry: the process ended during the last try; the same token, one try more
        (InHand(A, "old", 1), A, True, InHand(A, "old", 2)),
        (InHand(A, "old", 2), A, True, InHand(A, "old", 3)),
        # this process's own last try failed on Redis and could not take its try back: not one more
        (InHand(A, "old", 2), A, False, InHand(A, "old", 2)),
        # a record a try took back (a broker outage) to 0 tries
        (InHand(A, "old", 0), A, True, InHand(A, "old", 1)),
    ],
)
def test_take_up(record: InHand | None, digest: str, counted: bool, expected: InHand) -> None:
    assert take_up(record, digest, "new", counted=counted) == expected


@pytest.mark.parametrize("tries, poison", [(1, False), (MAX_TRIES, False), (MAX_TRIES + 1, True)])
def test_an_entry_is_poison_when_the_consumer_died_twice_with_it(tries: int, poison: bool) -> None:
    assert InHand(A, "t", tries).poison is poison


@pytest.mark.parametrize(
    "entry, key",
    [
        ({"type": "email", "realm": "r"}, "ingest:tok"),
        ({"type": "email", "realm": "r", "idempotency_key": None}, "ingest:tok"),
        ({"type": "email", "realm": "r", "idempotency_key": "reset-42"}, "reset-42"),  # unchanged
        ({"type": "email", "realm": "r", "idempotency_key": ""}, ""),  # ...and refused by send_email
        ({"type": "event", "realm": "r", "event": {"type": "LOGIN_ERROR"}}, "ingest:tok"),
        ({"type": "event", "realm": "r", "event": {"type": "LOGIN_ERROR", "id": None}}, "ingest:tok"),
        # the event's own id is its key already (event:<id>): the same event pushed twice is one job
        ({"type": "event", "realm": "r", "event": {"type": "LOGIN_ERROR", "id": "e-1"}}, None),
        ({"type": "event", "realm": "r", "event": "not an object"}, "ingest:tok"),
    ],
)
def test_idempotency_key_for(entry: dict[str, Any], key: str | None) -> None:
    assert idempotency_key_for(entry, "tok") == key


@pytest.mark.parametrize(
    "error, text",
    [
        (OverflowError("int too large to convert to float"), "OverflowError: int too large to convert to float"),
        (ValueError("1 validation error\n  context\n    too deep"), "ValueError: 1 validation error context too deep"),
        (RecursionError(), "RecursionError"),
        (KeyError("x"), "KeyError: 'x'"),
        (ValueError("x" * 5000), "ValueError: " + "x" * 1000),
    ],
)  # fmt: skip
def test_an_unexpected_exception_is_described_on_one_line(error: BaseException, text: str) -> None:
    assert describe(error) == text


def test_enqueue_passes_the_key_to_publish_event_and_send_email(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import api

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(api, "publish_event",
                        lambda realm, event, *, idempotency_key: calls.append(("event", idempotency_key)) or "j1")  # fmt: skip
    monkeypatch.setattr(api, "send_email",
                        lambda realm, template, to, **fields: calls.append(("email", fields)) or "j2")  # fmt: skip

    assert enqueue({"type": "event", "realm": "r", "event": {"type": "LOGIN_ERROR"}}, "tok") == "j1"
    assert enqueue({"type": "email", "realm": "r", "template": "t", "to": "a@example.com"}, "tok") == "j2"
    assert calls == [
        ("event", "ingest:tok"),
        ("email", {"to_name": None, "locale": None, "context": None, "idempotency_key": "ingest:tok",
                   "expires_in": None}),
    ]  # fmt: skip
