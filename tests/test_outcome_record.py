"""Outcomes (worker/outcomes): recorded where a job ends, counted per realm and hour and in all-time totals,
in one round trip; the outcome of each ending, end to end with a real worker and SMTP server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from config.keys import Keys
from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.jobs.stats import Stats
from worker.outcomes.outcome import BOUNCED, DEAD_LETTERED, EXPIRED, SENT, Outcome, dead_letter_event
from worker.outcomes.record import Outcomes
from worker.runtime import runtime

CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}


@pytest.mark.parametrize(("reason", "event"), [("expired", EXPIRED), ("permanent", DEAD_LETTERED),
                                               ("template", DEAD_LETTERED), ("recipient", DEAD_LETTERED)])  # fmt: skip
def test_a_dead_letters_outcome(reason: str, event: str) -> None:
    assert dead_letter_event(reason) == event


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        Outcome("delivered", "acme", "job-1")


def test_recording_counts_the_hour_and_the_totals_in_one_round_trip(fake_redis: Any) -> None:
    keys = Keys("t")
    outcomes = Outcomes(fake_redis, keys, Stats(fake_redis, keys))
    outcomes.record(Outcome(SENT, "acme", "job-1"))
    outcomes.record(Outcome(SENT, "acme", "bulk-1", count=200, bulk=True))
    outcomes.record(Outcome(EXPIRED, "acme", "job-2", reason="expired"))
    outcomes.record(Outcome(BOUNCED, "beta", "job-3", reason="hard"))
    assert outcomes.totals() == {("acme", SENT): 201, ("acme", EXPIRED): 1, ("beta", BOUNCED): 1}
    assert Stats(fake_redis, keys).last_hour("acme") == {"sent": 201, "dead": 1}
    assert Stats(fake_redis, keys).last_hour("beta") == {"bounced": 1}


@pytest.mark.integration
def test_each_ending_records_its_outcome(
    realm: str, smtp_server: SmtpTestServer, celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime().settings, "recipient_cooldown", 30)  # the worker runs in this process
    runtime().store.save(realm, smtp_server.settings_dict())
    refused = f"gone-{uuid.uuid4().hex[:6]}@example.com"
    smtp_server.reject_recipient(refused, "550 5.1.1 no such user")
    sent = api.wait_for_result(api.send_email(realm, "password-reset", "alice@example.com", context=CONTEXT))
    dead = api.wait_for_result(api.send_email(realm, "password-reset", refused, context=CONTEXT))
    dropped = api.wait_for_result(
        api.send_email(realm, "password-reset", "alice@example.com", context=CONTEXT)
    )
    assert (sent["status"], dead["status"], dropped["status"]) == ("sent", "dead-lettered", "dropped")
    totals = runtime().outcomes.totals()
    assert (totals[(realm, SENT)], totals[(realm, DEAD_LETTERED)], totals[(realm, "dropped")]) == (1, 1, 1)
    assert runtime().stats.last_hour(realm) == {"sent": 1, "dead": 1, "dropped_cooldown": 1}
