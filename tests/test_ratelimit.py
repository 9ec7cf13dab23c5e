"""The shared limiter on a real Redis: it must hold across several senders at once."""

import threading
import time

import pytest

from config.keys import Keys
from worker.delivery.ratelimit import RateLimiter


@pytest.mark.integration
def test_concurrent_senders_share_one_rate(real_redis, key_prefix):
    keys = Keys(key_prefix)
    per_second = 200.0
    stamps: list[float] = []
    lock = threading.Lock()

    def sender() -> None:
        limiter = RateLimiter(real_redis, keys)
        for _ in range(100):
            limiter.acquire("acme", 1, per_second, None, max_wait=5)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=sender) for _ in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    # 400 messages at 200/s take at least ~2 s whatever the number of senders.
    assert elapsed >= 400 / per_second * 0.95
    stamps.sort()
    # No 1-second window holds more than the limit plus 5%.
    worst = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert worst <= per_second * 1.05


@pytest.mark.integration
def test_hourly_quota_refuses_beyond_it(real_redis, key_prefix):
    limiter = RateLimiter(real_redis, Keys(key_prefix))
    assert limiter.reserve("acme", 3, None, 5).reserved
    assert limiter.reserve("acme", 2, None, 5).reserved
    refused = limiter.reserve("acme", 1, None, 5)
    assert not refused.reserved and 0 < refused.wait <= 3600


def test_no_limit_costs_nothing(fake_redis):
    reservation = RateLimiter(fake_redis, Keys("t")).reserve("acme", 10, None, None)
    assert reservation.reserved and reservation.wait == 0
    assert fake_redis.keys("*") == []
