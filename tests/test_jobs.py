import json

import pytest

from config.errors import InvalidInput
from config.names import check_locale
from worker.jobs.events import event_job, parse_event
from worker.jobs.model import (
    MAX_CONTEXT_BYTES,
    MAX_JSON_DEPTH,
    job_id_for,
    json_depth,
    new_job,
)


def nested(levels, leaf=1):
    """A dict `levels` deep: nested(1) is {"a": 1}."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def cyclic():
    value = {"a": 1}
    value["self"] = value
    return value


# A language tag of the right shape, only longer than the 35 characters of RFC 5646.
LONG_LOCALE = "en-" + "-".join(["abcdefgh"] * 28_000)  # about 250 KB
LOCALE_35 = "en-" + "-".join(["abcdefgh"] * 3) + "-abcde"


def make(**overrides):
    args = {"realm": "acme", "template": "password-reset", "to": "alice@example.com"}
    args.update(overrides)
    return new_job(args.pop("realm"), args.pop("template"), args.pop("to"), **args, now=1000.0)


def field_of(excinfo):
    return excinfo.value.problems[0][0]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"realm": "../etc"}, "realm"),
        ({"realm": ""}, "realm"),
        ({"realm": "acme\n"}, "realm"),  # `$` would match before a final newline
        ({"template": "password-reset\n"}, "template"),
        ({"locale": "de\n"}, "locale"),
        ({"template": "Password Reset"}, "template"),
        ({"to": "not-an-address"}, "to"),
        ({"to": "alice@example.com\r\nBcc: eve@evil.example"}, "to"),
        ({"to": "jörg@example.com"}, "to"),
        ({"to_name": "Alice\nBcc: eve@evil.example"}, "to_name"),
        ({"locale": "de\r\n"}, "locale"),
        ({"locale": "not a locale"}, "locale"),
        ({"context": ["not", "a", "dict"]}, "context"),
        ({"context": {"x": object()}}, "context"),
        ({"context": {"x": float("nan")}}, "context"),
        ({"context": {"x": "\ud800"}}, "context"),
        ({"context": {"blob": "x" * (MAX_CONTEXT_BYTES + 1)}}, "context"),
        ({"idempotency_key": "k\r\n"}, "idempotency_key"),
        ({"context": {"link": "javascript:alert(1)"}}, "context.link"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"expires_in": 10 * 86_400}, "expires_in"),
        ({"expires_in": 10**400}, "expires_in"),
        ({"expires_in": 1e308}, "expires_in"),
        ({"expires_in": float("inf")}, "expires_in"),
        ({"expires_in": float("nan")}, "expires_in"),
        ({"expires_in": "60"}, "expires_in"),
        ({"locale": LOCALE_35 + "x"}, "locale"),
        ({"locale": LONG_LOCALE}, "locale"),
        ({"context": nested(MAX_JSON_DEPTH + 1)}, "context"),
        ({"context": {"link": "https://x", "deep": nested(299)}}, "context"),  # pydantic gives up at ~300
        ({"context": nested(5000)}, "context"),  # past Python's recursion limit
        (
            {"context": {"a": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)}},
            "context",
        ),  # arrays count
        ({"context": cyclic()}, "context"),
        ({"context": {"link_expiration": 10**400}}, "context.link_expiration"),  # float() overflows
        ({"context": {"link_expiration": 1e400}}, "context"),  # inf (JSON reads 1e400 so): not JSON
        ({"context": {"link_expiration": float("nan")}}, "context"),
        ({"context": {"link_expiration": 0}}, "context.link_expiration"),
        ({"context": {"link_expiration": -5}}, "context.link_expiration"),
        ({"context": {"link_expiration": 7 * 24 * 60 + 1}}, "context.link_expiration"),
        ({"context": {"link_expiration": True}}, "context.link_expiration"),
        ({"context": {"link_expiration": "5"}}, "context.link_expiration"),
        ({"context": {"notice": {"link": "data:text/html,x"}}}, "context.notice.link"),
    ],
)
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(InvalidInput) as excinfo:
        make(**overrides)
    assert field_of(excinfo) == field


@pytest.mark.parametrize(
    "overrides",
    [
        {"locale": LOCALE_35},
        {"locale": "zh-Hant-TW"},
        {"context": nested(MAX_JSON_DEPTH)},
        {"context": {"link_expiration": 1}},
        {"context": {"link_expiration": 7 * 24 * 60}},
        {"context": {"link_expiration": 2.5}},
        {"context": {"link_expiration": None}},
        {"expires_in": 0.5},
    ],
    ids=str,
)
def test_input_at_the_limits_is_accepted(overrides):
    assert make(**overrides).realm == "acme"


def test_errors_are_one_line_naming_the_field_and_the_rule():
    rules = {}
    for overrides in ({"locale": LONG_LOCALE}, {"context": nested(5000)},
                      {"context": {"link_expiration": 10**400}}):  # fmt: skip
        with pytest.raises(InvalidInput) as excinfo:
            make(**overrides)
        rules[field_of(excinfo)] = str(excinfo.value)
    assert rules == {
        "locale": "locale: must be a language tag like 'en', 'de' or 'pt-BR' (at most 35 characters)",
        "context": "context: is nested deeper than 32 levels of objects and arrays",
        "context.link_expiration": "context.link_expiration: must be a number of minutes from 1 to 10080",
    }


@pytest.mark.parametrize(
    "value, depth",
    [
        (1, 0),
        ("x", 0),
        (None, 0),
        ({}, 1),
        ([], 1),
        ({"a": 1, "b": "x"}, 1),
        ({"a": [1]}, 2),
        ({"a": {"b": {}}, "c": [[[]]]}, 4),
        ((1, (2,)), 2),
        (nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH),
        (nested(100_000), MAX_JSON_DEPTH + 1),  # the walk stops one level past the limit
        (cyclic(), MAX_JSON_DEPTH + 1),
    ],
)
def test_json_depth_counts_levels_of_objects_and_arrays(value, depth):
    assert json_depth(value) == depth


@pytest.mark.parametrize(
    "value, ok",
    [
        (None, True),
        ("en", True),
        ("pt-BR", True),
        ("pt_BR", True),
        (LOCALE_35, True),
        (LOCALE_35 + "x", False),
        (LONG_LOCALE, False),
        ("de\n", False),
        ("x", False),
        (42, False),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_check_locale(value, ok):
    if ok:
        assert check_locale("recipients[3].locale", value) == value
    else:
        with pytest.raises(InvalidInput) as excinfo:
            check_locale("recipients[3].locale", value)
        assert field_of(excinfo) == "recipients[3].locale"


def test_an_event_at_the_depth_limit_gives_a_valid_notice():
    """details sit one level deeper in the notice's context than in the event."""
    event = {"type": "LOGIN_ERROR", "user": {"email": "a@example.com"}, "details": nested(MAX_JSON_DEPTH - 1)}
    assert json_depth(event) == MAX_JSON_DEPTH
    job = event_job("acme", parse_event(event), ("LOGIN_ERROR",))
    assert job is not None and json_depth(job.context) == MAX_JSON_DEPTH + 1


def test_utf8_local_part_only_when_the_realm_allows_it():
    assert make(to="jörg@example.com", allow_utf8=True).to == "jörg@example.com"


def test_idn_domain_is_accepted():
    assert make(to="kunde@bücher.example").to == "kunde@bücher.example"


def test_link_jobs_expire_with_their_link_by_default():
    job = make(context={"link": "https://x", "link_expiration": 5})
    assert job.expires_at == 1000.0 + 300
    assert job.expired(now=1000.0 + 301) and not job.expired(now=1000.0 + 299)


def test_explicit_expiry_wins_and_notices_do_not_expire_by_default():
    assert make(expires_in=60, context={"link_expiration": 5}).expires_at == 1060.0
    assert make(template="event-login_error", context={"link_expiration": 5}).expires_at is None


def test_idempotency_key_gives_a_stable_job_id_per_realm():
    assert job_id_for("acme", "k1") == job_id_for("acme", "k1")
    assert job_id_for("acme", "k1") != job_id_for("other", "k1")
    assert job_id_for("acme", None) != job_id_for("acme", None)
    assert make(idempotency_key="reset-42").id == make(idempotency_key="reset-42").id
