import random

import pytest

from worker.retry import Decision, RetryPolicy

POLICY = RetryPolicy(max_attempts=5, base_delay=2.0, max_delay=30.0)


@pytest.mark.parametrize("attempt, ceiling", [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)])
def test_delay_doubles_up_to_the_cap_with_jitter(attempt, ceiling):
    delays = [POLICY.delay(attempt, random.Random(seed)) for seed in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jitter spreads retries that failed together


@pytest.mark.parametrize(
    "attempt, expires_in, delay, decision",
    [
        (1, None, 5, Decision.RETRY),
        (4, None, 5, Decision.RETRY),
        (5, None, 5, Decision.DEAD_EXHAUSTED),
        (2, 60, 5, Decision.RETRY),
        (2, 4, 5, Decision.DEAD_EXPIRED),  # the link would be dead before the retry runs
        (5, 4, 5, Decision.DEAD_EXHAUSTED),
    ],
)
def test_decide(attempt, expires_in, delay, decision):
    now = 1_000.0
    expires_at = now + expires_in if expires_in is not None else None
    assert POLICY.decide(attempt, now=now, expires_at=expires_at, delay=delay) is decision


def test_service_settings_keep_retry_delay_below_visibility_timeout(monkeypatch):
    from config.errors import ConfigError
    from config.settings import load_settings

    monkeypatch.setenv("MAILWORKER_VISIBILITY_TIMEOUT", "600")
    monkeypatch.setenv("MAILWORKER_RETRY_MAX_DELAY", "400")
    with pytest.raises(ConfigError, match="MAILWORKER_RETRY_MAX_DELAY"):
        load_settings()
