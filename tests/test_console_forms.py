"""The console's decisions as tables: a posted Email tab -> the store's changes, where each error goes,
when a button must not act on the realm's draft, the chart's geometry, a bulk job's percentage."""

from __future__ import annotations

from typing import Any

import pytest

from config.crypto import MASK
from config.smtp import parse_smtp_settings
from worker.http.console.bulk import percent
from worker.http.console.chart import HEIGHT, bar_chart
from worker.http.console.forms import (
    FIELD_NAMES,
    FIELDS,
    changes_from_form,
    form_conflict,
    place_errors,
    posted_values,
    shown_values,
    stored_secrets,
)

BASE = {"from": "noreply@acme.example", "host": "smtp.acme.example"}


@pytest.mark.parametrize(
    "posted, expected",
    [
        ({}, {"ssl": False, "starttls": False, "auth": False, "verify_tls": False}),  # unticked is off
        ({"ssl": "on", "allow_utf8": "on"}, {"ssl": True, "allow_utf8": True}),
        ({"host": "  smtp.example  "}, {"host": "smtp.example"}),
        ({"reply_to": "", "port": " "}, {"reply_to": None, "port": None}),  # empty: back to the default
        ({"port": "587", "timeout": "7.5"}, {"port": "587", "timeout": "7.5"}),  # the model converts
        ({"notify_events": "LOGIN_ERROR, UPDATE_PASSWORD,,"}, {"notify_events": ["LOGIN_ERROR", "UPDATE_PASSWORD"]}),
        ({"notify_events": ""}, {"notify_events": []}),  # cleared: no notices
        ({"from_display_name": "<script>alert(1)</script>"}, {"from_display_name": "<script>alert(1)</script>"}),
    ],
)  # fmt: skip
def test_changes_from_form(posted: dict[str, str], expected: dict[str, Any]) -> None:
    changes = changes_from_form(posted)
    assert {name: changes[name] for name in expected} == expected
    assert set(changes) == FIELD_NAMES - {
        "password",
        "oauth_client_secret",
        "iam_client_secret",
    }  # every field, always


@pytest.mark.parametrize(
    "posted, password",
    [({"password": ""}, "absent"), ({}, "absent"), ({"password": "new"}, "new"), ({"password": MASK}, MASK)],
)
def test_an_empty_secret_field_keeps_the_stored_secret(posted: dict[str, str], password: str) -> None:
    """Absent: the store keeps what it holds. The mask is passed on: the store knows it means 'the stored one'."""
    assert changes_from_form(posted).get("password", "absent") == password


def test_a_whole_form_round_trips_through_the_model() -> None:
    settings = parse_smtp_settings({**BASE, "port": 587, "starttls": True, "auth": True, "username": "u",
                                    "password": "pw", "rate_limit_per_hour": 100, "reply_to": "h@acme.example"})  # fmt: skip
    shown = shown_values(settings)
    assert shown["password"] == "" and shown["port"] == "587" and shown["starttls"] is True
    form = {k: ("on" if v is True else v) for k, v in shown.items() if v is not False}
    again = parse_smtp_settings({**changes_from_form(form), "password": "pw"})
    assert again == settings
    assert stored_secrets(settings) == {"password"} and stored_secrets(None) == frozenset()


def test_a_new_realm_shows_the_defaults() -> None:
    shown = shown_values(None)
    assert (shown["from"], shown["host"], shown["port"], shown["verify_tls"], shown["ssl"]) == (
        "",
        "",
        "25",
        True,
        False,
    )
    assert "LOGIN_ERROR" in shown["notify_events"]


def test_posted_values_show_the_form_as_typed_but_never_a_secret() -> None:
    shown = posted_values({"host": "h x", "ssl": "on", "password": "typed", "port": "nope"})
    assert (shown["host"], shown["ssl"], shown["starttls"], shown["password"], shown["port"]) == (
        "h x",
        True,
        False,
        "",
        "nope",
    )
    assert set(shown) == {field.name for field in FIELDS}


@pytest.mark.parametrize(
    "problems, by_field, general",
    [
        ([("ssl", "not both")], {"ssl": ["not both"]}, []),
        ([("from_address", "bad")], {"from": ["bad"]}, []),
        ([("port", "a"), ("port", "b")], {"port": ["a", "b"]}, []),
        ([("", "nothing to save")], {}, ["nothing to save"]),
        ([("send_to", "not a valid address")], {}, ["send_to: not a valid address"]),  # not on the form
        ([("notify_events.2", "unknown")], {"notify_events": ["unknown"]}, []),
    ],
)  # fmt: skip
def test_place_errors(
    problems: list[tuple[str, str]], by_field: dict[str, list[str]], general: list[str]
) -> None:
    assert place_errors(problems) == (by_field, general)


@pytest.mark.parametrize(
    "pending, shown, saved, version, refused",
    [
        ("", "", 3, 3, None),  # no draft then, none now, the same version
        ("ab12", "ab12", 3, 3, None),  # the draft the page showed
        ("ab12", "ab12", 4, 3, None),  # (its base is the store's to check at save: it says which version)
        ("", "", 0, 0, None),  # a new realm
        ("", "ab12", 3, 3, "saved or discarded meanwhile"),
        ("ab12", "", 3, 3, "Someone started draft ab12"),
        ("cd34", "ab12", 3, 3, "The draft changed"),
        ("", "", 4, 3, "saved by someone else"),  # Test Connection would re-base the form on version 4
        ("", "", 1, 0, "saved by someone else"),  # a new realm someone saved first
    ],
)  # fmt: skip
def test_form_conflict(pending: str, shown: str, saved: int, version: int, refused: str | None) -> None:
    reason = form_conflict(pending, shown, saved, version)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_the_chart_scales_to_the_busiest_hour_and_labels_every_fourth() -> None:
    series = [
        (480_000 + h, sent, failed)
        for h, (sent, failed) in enumerate([(0, 0), (10, 5), (20, 0), (0, 0), (5, 1)])
    ]
    chart = bar_chart(series)
    assert chart.peak == 20 and len(chart.bars) == 10
    heights = {bar.title: bar.height for bar in chart.bars}
    tallest = max(heights.values())
    assert tallest == chart.base - chart.top  # 20 sent: the full height
    assert [bar.height for bar in chart.bars if bar.kind == "sent"] == [
        0,
        tallest / 2,
        tallest,
        0,
        tallest / 4,
    ]
    assert all(bar.y + bar.height == pytest.approx(HEIGHT - 24) for bar in chart.bars)  # on the axis
    assert [label for _, label in chart.labels] == [
        "00:00",
        "04:00",
    ]  # hours 480000 (20000 days) and 480004, UTC
    assert bar_chart([(1, 0, 0)]).peak == 1  # an idle day: flat, no division by zero


@pytest.mark.parametrize(
    "progress, expected",
    [({"total": 0}, 100.0), ({"total": 4, "sent": 1}, 25.0), ({"total": 3, "sent": 1, "failed": 1, "cancelled": 1}, 100.0),
     ({"total": 3, "sent": 1}, 33.3)],
)  # fmt: skip
def test_percent(progress: dict[str, int], expected: float) -> None:
    assert percent(progress) == expected
