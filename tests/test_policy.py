import random

import pytest

from worker.policy import Decision, RetryPolicy

POLICY = RetryPolicy(max_attempts=5, base_delay=2.0, max_delay=30.0, max_age=3600.0, min_useful_life=10.0)
DEFAULTS = RetryPolicy()


@pytest.mark.parametrize("attempt, ceiling", [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)])
def test_delay_doubles_up_to_the_cap_with_jitter(attempt, ceiling):
    delays = [POLICY.delay(attempt, random.Random(seed)) for seed in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jitter spreads retries that failed together


def test_delay_of_a_very_late_attempt_stays_at_the_cap():
    assert DEFAULTS.delay(10_000) <= DEFAULTS.max_delay


NOW = 10_000.0


@pytest.mark.parametrize(
    "attempt, age, expires_in, delay, ambiguous, decision, waits",
    [
        (1, 0, None, 5, 0, Decision.RETRY, 5),
        (4, 60, None, 5, 0, Decision.RETRY, 5),
        (5, 60, None, 5, 0, Decision.DEAD_EXHAUSTED, 0),  # max_attempts
        (2, 0, 60, 5, 0, Decision.RETRY, 5),
        (2, 0, 30, 25, 0, Decision.RETRY, 20),  # shortened: the last try lands while the link lives
        (2, 0, 9, 5, 0, Decision.DEAD_EXPIRED, 0),  # too close to the link's end to be of use
        (2, 3590, None, 30, 0, Decision.DEAD_EXHAUSTED, 0),  # no link: max_age reached
        (2, 3000, None, 30, 0, Decision.RETRY, 30),
        (1, 0, 600, 5, 1, Decision.RETRY, 5),  # one ambiguous attempt: try again, same Message-ID
        (1, 0, 600, 5, 2, Decision.DEAD_AMBIGUOUS, 0),  # two may have arrived: stop, say so
    ],
)
def test_decide(attempt, age, expires_in, delay, ambiguous, decision, waits):
    expires_at = NOW + expires_in if expires_in is not None else None
    found, wait = POLICY.decide(
        attempt, now=NOW, created_at=NOW - age, expires_at=expires_at, delay=delay, ambiguous=ambiguous
    )
    assert (found, wait) == (decision, waits)


@pytest.mark.parametrize(
    "expires_in, outage_s, delivered",
    [
        (None, 600, True),  # verifications through a 10-minute 451 outage (it killed all 500 before)
        (None, 4 * 3600, True),
        (300, 600, False),  # a 5-minute reset cannot outlive a 10-minute outage: it expires
        (1800, 600, True),  # a 30-minute link does
    ],
)
def test_the_default_horizon_outlives_ordinary_outages(expires_in, outage_s, delivered):
    """Walk the default schedule through an outage that fails every attempt for `outage_s` seconds."""
    rng = random.Random(7)
    created = now = NOW
    expires_at = created + expires_in if expires_in is not None else None
    attempt = 0
    while True:
        attempt += 1
        if now - created >= outage_s:
            assert delivered, f"delivered at attempt {attempt}, {now - created:.0f}s after creation"
            return
        decision, wait = DEFAULTS.decide(attempt, now=now, created_at=created, expires_at=expires_at,
                                         delay=DEFAULTS.delay(attempt, rng))  # fmt: skip
        if decision is not Decision.RETRY:
            assert not delivered, f"{decision} after {attempt} attempts, {now - created:.0f}s"
            return
        now += wait


def test_service_settings_name_the_variable_when_retries_do_not_fit(monkeypatch):
    from config.errors import ConfigError
    from config.settings import load_settings

    monkeypatch.setenv("MAILWORKER_RETRY_BASE_DELAY", "900")
    monkeypatch.setenv("MAILWORKER_RETRY_MAX_DELAY", "400")
    with pytest.raises(ConfigError, match="MAILWORKER_RETRY_BASE_DELAY"):
        load_settings()
