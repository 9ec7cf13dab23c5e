import pytest

from config.errors import InvalidInput
from worker.jobs import MAX_CONTEXT_BYTES, job_id_for, new_job


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
    ],
)
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(InvalidInput) as excinfo:
        make(**overrides)
    assert field_of(excinfo) == field


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
