"""The fault sink's own options (lost and late replies to the end of DATA), against the real SMTP client.

Fast, so not marked `reliability`: the fault scenarios rely on these counts being right.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from config.smtp import parse_smtp_settings
from tests.reliability.sink import Sink
from worker.content.message import build_message
from worker.content.render import RenderedEmail
from worker.smtp import SendResult, SmtpFailure, open_session

RENDERED = RenderedEmail("s", "t\n", "<p>t</p>")


def send(sink: Sink, to: str, **overrides: Any) -> SendResult | SmtpFailure:
    settings = parse_smtp_settings(sink.settings_dict(**{"timeout": 0.3, "data_timeout": 2, **overrides}))
    try:
        with open_session(settings) as session:
            return session.send(build_message(settings, RENDERED, to))
    except SmtpFailure as failure:
        return failure


def test_a_lost_reply_counts_as_accepted_and_the_client_sees_an_ambiguous_failure() -> None:
    with Sink(lose_reply=0.5, seed=3) as sink:
        outcomes = [send(sink, f"user{i}@example.com") for i in range(30)]
    lost = [o for o in outcomes if isinstance(o, SmtpFailure)]
    assert all(o.ambiguous and o.stage == "data" for o in lost)
    assert 0 < len(lost) < 30 and sink.counters["lost reply"] == len(lost)
    assert sink.total() == 30 and sink.duplicates() == 0 and sink.counters["connections"] == 30


def test_a_late_reply_for_a_share_of_the_messages() -> None:
    with Sink(data_reply_delay=0.5, slow_share=0.5, seed=5) as sink:
        started = time.monotonic()
        outcomes = [send(sink, f"user{i}@example.com") for i in range(8)]
        elapsed = time.monotonic() - started
    slow = sink.counters["slow reply"]
    assert all(isinstance(o, SendResult) for o in outcomes)  # timeout 0.3 s, but data_timeout 2 s
    assert 0 < slow < 8 and elapsed >= 0.5 * slow
    assert sink.total() == 8


def test_a_late_reply_past_data_timeout_leaves_the_message_accepted() -> None:
    with Sink(data_reply_delay=1.0) as sink:
        outcome = send(sink, "late@example.com", data_timeout=0.3)
        assert isinstance(outcome, SmtpFailure) and outcome.ambiguous
        assert sink.total() == 1 and sink.accepted["late@example.com"] == 1


def test_per_message_delay_applies_to_every_message_and_holds_up_no_other_connection() -> None:
    with Sink(per_message_delay=0.6) as sink:
        outcomes: list[SendResult | SmtpFailure] = []
        threads = [
            threading.Thread(target=lambda i=i: outcomes.append(send(sink, f"user{i}@example.com")))
            for i in range(4)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        elapsed = time.monotonic() - started
    assert len(outcomes) == 4 and all(isinstance(o, SendResult) for o in outcomes)
    assert 0.6 <= elapsed < 1.8  # four at once, not one after another
    assert sink.total() == 4 and sink.counters["slow reply"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"lose_reply": 1.5},
        {"lose_reply": -0.1},
        {"slow_share": 2},
        {"data_reply_delay": -1},
        {"per_message_delay": -1},
    ],
)
def test_options_out_of_range_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Sink(**options)
