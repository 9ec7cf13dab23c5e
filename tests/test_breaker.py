"""The per-realm circuit breaker (worker/delivery/breaker.py) as a table of moments, on fakeredis with Lua.

The end-to-end proof (a black-holed realm next to a healthy one, real worker processes) is
tests/reliability/test_slow_realm.py.
"""

from __future__ import annotations

import pytest

from config.keys import Keys
from worker.delivery.breaker import CLOSED, OPEN, PROBE, PROBING, CircuitBreaker
from worker.policy import counts_against
from worker.smtp import (
    Kind,
    SmtpFailure,
)

EP = "smtp.acme.example:587"
T0 = 1_000_000.0


@pytest.fixture
def breaker(fake_redis) -> CircuitBreaker:
    return CircuitBreaker(fake_redis, Keys("bt"), threshold=3, window=60, cooloff=30, max_cooloff=100)


def fail(breaker: CircuitBreaker, n: int, at: float, realm: str = "acme", endpoint: str = EP) -> list[bool]:
    return [breaker.failure(realm, endpoint, "connect: timed out", now=at) for _ in range(n)]


def test_a_realm_without_history_is_closed_and_untracked(breaker):
    verdict = breaker.check("acme", EP, now=T0)
    assert (verdict.state, verdict.allowed, verdict.tracked) == (CLOSED, True, False)


def test_failures_below_the_threshold_keep_it_closed_but_tracked(breaker):
    assert fail(breaker, 2, T0) == [False, False]
    verdict = breaker.check("acme", EP, now=T0 + 1)
    assert (verdict.state, verdict.allowed, verdict.failures, verdict.tracked) == (CLOSED, True, 2, True)


def test_the_threshold_opens_it_for_the_cooloff(breaker):
    assert fail(breaker, 3, T0) == [False, False, True]
    verdict = breaker.check("acme", EP, now=T0 + 10)
    assert (verdict.state, verdict.allowed) == (OPEN, False)
    assert verdict.wait == pytest.approx(20)
    assert verdict.error == "connect: timed out"


def test_failures_spread_over_more_than_the_window_do_not_open_it(breaker):
    fail(breaker, 2, T0)
    assert fail(breaker, 1, T0 + 61) == [False]  # a new window started
    assert breaker.check("acme", EP, now=T0 + 62).state == CLOSED


def test_after_the_cooloff_one_probe_goes_and_the_others_wait_for_it(breaker):
    fail(breaker, 3, T0)
    first = breaker.check("acme", EP, probe_ttl=15, now=T0 + 31)
    second = breaker.check("acme", EP, probe_ttl=15, now=T0 + 32)
    assert (first.state, first.allowed, first.tracked) == (PROBE, True, True)
    assert (second.state, second.allowed) == (PROBING, False)
    assert second.wait == pytest.approx(14)


def test_a_probe_that_never_reports_frees_its_slot_after_its_ttl(breaker):
    fail(breaker, 3, T0)
    assert breaker.check("acme", EP, probe_ttl=15, now=T0 + 31).state == PROBE
    assert breaker.check("acme", EP, probe_ttl=15, now=T0 + 47).state == PROBE  # the prober was killed


def test_a_failed_probe_reopens_with_a_doubled_cooloff_capped(breaker):
    fail(breaker, 3, T0)
    moment = T0
    waits = []
    for _ in range(4):
        verdict = breaker.check("acme", EP, now=moment + 1000)  # long after any cool-off: probe
        assert verdict.state == PROBE
        moment += 1000
        assert breaker.failure("acme", EP, "connect: timed out", now=moment) is True
        waits.append(breaker.check("acme", EP, now=moment).wait)
    assert waits == [pytest.approx(60), pytest.approx(100), pytest.approx(100), pytest.approx(100)]


def test_a_success_closes_it(breaker):
    fail(breaker, 3, T0)
    assert breaker.check("acme", EP, now=T0 + 31).state == PROBE
    breaker.success("acme")
    verdict = breaker.check("acme", EP, now=T0 + 32)
    assert (verdict.state, verdict.tracked) == (CLOSED, False)
    assert breaker.state("acme") == {}


def test_late_failures_while_open_do_not_extend_the_cooloff(breaker):
    fail(breaker, 3, T0)
    assert fail(breaker, 2, T0 + 5) == [False, False]  # the rest of the first wave times out
    assert breaker.check("acme", EP, now=T0 + 10).wait == pytest.approx(20)


def test_new_settings_pointing_elsewhere_start_closed(breaker):
    fail(breaker, 3, T0)
    assert breaker.check("acme", "smtp.other.example:587", now=T0 + 1).state == CLOSED
    assert breaker.state("acme") == {}


def test_realms_are_independent(breaker):
    fail(breaker, 3, T0, realm="acme")
    assert breaker.check("acme", EP, now=T0 + 1).state == OPEN
    assert breaker.check("globex", EP, now=T0 + 1).state == CLOSED


def test_the_state_expires_by_itself(breaker, fake_redis):
    fail(breaker, 3, T0)
    ttl = fake_redis.ttl(Keys("bt").breaker("acme"))
    assert 0 < ttl <= breaker.key_ttl
    assert breaker.key_ttl >= breaker.window + breaker.max_cooloff


def _silent(stage: str, kind: str, *, ambiguous: bool = False) -> SmtpFailure:
    return SmtpFailure(None, f"{kind} at {stage}", stage, kind=kind, ambiguous=ambiguous)


@pytest.mark.parametrize(
    "failure, counted",
    [
        # setting up a session and nobody answers: counted (each may have held a worker for a timeout)
        *[(_silent(stage, kind), True) for stage in ("connect", "tls", "ehlo", "auth", "noop")
          for kind in (Kind.TIMEOUT, Kind.REFUSED, Kind.NETWORK)],
        # within a transaction: the server answered the set-up, so it is there (slow, or it hung up)
        *[(_silent(stage, kind), False) for stage in ("mail", "rcpt", "data")
          for kind in (Kind.TIMEOUT, Kind.REFUSED, Kind.NETWORK, Kind.CLOSED)],
        # the reply to the end of DATA never came: the message may be delivered, whatever the stage says
        (_silent("data", Kind.TIMEOUT, ambiguous=True), False),
        (_silent("data", Kind.CLOSED, ambiguous=True), False),
        (_silent("connect", Kind.TIMEOUT, ambiguous=True), False),
        # it answered, then hung up; or it answered with something we refuse: alive
        (_silent("connect", Kind.CLOSED), False),
        (_silent("ehlo", Kind.CLOSED), False),
        (SmtpFailure(None, "certificate", "tls", kind=Kind.TLS_HANDSHAKE), False),
        (SmtpFailure(None, "no AUTH offered", "auth", kind=Kind.NO_AUTH), False),
        (SmtpFailure(None, "needs SMTPUTF8", "mail", kind=Kind.SMTPUTF8), False),
        # any reply code proves the server alive
        (SmtpFailure(421, "closing", "connect"), False),
        (SmtpFailure(421, "closing", "noop"), False),
        (SmtpFailure(535, "bad credentials", "auth"), False),
        (SmtpFailure(451, "try again", "rcpt"), False),
        (SmtpFailure(550, "no such user", "rcpt"), False),
        (SmtpFailure(451, "try again", "data"), False),
    ],
    ids=lambda value: (f"{value.stage}-{value.code or value.kind}{'-ambiguous' if value.ambiguous else ''}"
                       if isinstance(value, SmtpFailure) else str(value)),
)  # fmt: skip
def test_only_silence_while_setting_up_counts_against_a_realm(failure: SmtpFailure, counted: bool) -> None:
    assert counts_against(failure) is counted


def test_delivery_failures_carry_the_smtp_failure_the_runner_reports(realm):
    """tasks/runner.py reads the SmtpFailure behind a DeliveryFailure: pin that deliver() keeps it."""
    from tests.support.smtp_server import closed_port
    from worker.delivery.deliver import DeliveryFailure, deliver
    from worker.jobs.model import new_job
    from worker.runtime import runtime

    runtime().store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": closed_port()})
    job = new_job(realm, "email-test", "a@example.com")
    with pytest.raises(DeliveryFailure) as caught:
        deliver(job, runtime().services, attempt=1)
    cause = caught.value.__cause__ or caught.value.__context__
    assert isinstance(cause, SmtpFailure) and cause.kind == Kind.REFUSED
    assert counts_against(cause)
