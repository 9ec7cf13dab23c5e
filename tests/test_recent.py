"""Facts trusted for a moment (config/recent.py): read once per interval, forgotten on a change."""

from __future__ import annotations

from config.recent import Recent


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fact_is_read_once_per_interval_and_again_after_it() -> None:
    clock, reads = Clock(), []
    recent: Recent[str, int] = Recent(1.0, clock)

    def read() -> int:
        reads.append(clock.now)
        return len(reads)

    assert [recent.get("acme", read) for _ in range(50)] == [1] * 50
    clock.now += 0.99
    assert recent.get("acme", read) == 1
    clock.now += 0.02
    assert recent.get("acme", read) == 2 and len(reads) == 2
    assert recent.get("other", read) == 3  # per key


def test_forget_and_keep_and_zero() -> None:
    clock, values = Clock(), iter([None, None, 7, 8, 9])
    recent: Recent[str, int | None] = Recent(1.0, clock)
    assert recent.get("acme", lambda: next(values), keep=lambda v: v is not None) is None
    assert recent.get("acme", lambda: next(values), keep=lambda v: v is not None) is None  # not kept
    assert recent.get("acme", lambda: next(values)) == 7
    recent.forget("acme")
    assert recent.get("acme", lambda: next(values)) == 8
    always: Recent[str, int] = Recent(0, clock)
    counter = iter(range(3))
    assert [always.get("x", lambda: next(counter)) for _ in range(3)] == [0, 1, 2]


def test_a_breaker_opened_elsewhere_is_seen_within_the_moment_and_at_once_here(fake_redis: object) -> None:
    from config.keys import Keys
    from worker.delivery.breaker import CLOSED, CircuitBreaker

    keys = Keys("t")
    here = CircuitBreaker(fake_redis, keys, threshold=1, recent_seconds=60)  # type: ignore[arg-type]
    elsewhere = CircuitBreaker(fake_redis, keys, threshold=1)  # type: ignore[arg-type]
    assert here.check("acme", "127.0.0.1:25").state == CLOSED
    assert elsewhere.failure("acme", "127.0.0.1:25", "refused")
    assert here.check("acme", "127.0.0.1:25").state == CLOSED  # trusted for the moment
    assert elsewhere.check("acme", "127.0.0.1:25").state != CLOSED
    here.failure("acme", "127.0.0.1:25", "refused")  # this process's own failure: seen at once
    assert here.check("acme", "127.0.0.1:25").state != CLOSED


def test_a_realm_without_suppressions_costs_no_look_up_and_a_new_one_here_is_seen_at_once(
    fake_redis: object,
) -> None:
    from config.keys import Keys
    from worker.bounces.suppression import SuppressionList

    keys = Keys("t")
    here = SuppressionList(fake_redis, keys, recent_seconds=60)
    elsewhere = SuppressionList(fake_redis, keys)
    assert here.suppressed("acme", ["a@example.com"]) == [False]
    elsewhere.add("acme", "a@example.com", "hard-bounce", job_id="j1")
    assert here.suppressed("acme", ["a@example.com"]) == [False]  # trusted for the moment
    assert elsewhere.suppressed("acme", ["a@example.com"]) == [True]
    here.add("acme", "b@example.com", "complaint", job_id="j2")
    assert here.suppressed("acme", ["a@example.com", "b@example.com"]) == [True, True]
