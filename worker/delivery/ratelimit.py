"""A realm's sending rate limit, shared by every worker on every host through Redis.

Celery's `rate_limit` counts per worker process, so ten workers send ten times the provider's limit.
Here each sender *reserves* its messages in one Lua script (GCRA: a "theoretical arrival time" per realm,
advanced by 1/rate per message) and sleeps for the wait it is given. Redis' own clock is used, so hosts
with skewed clocks still share one schedule. An hourly quota is a counter per clock hour.

The limit holds for all of a realm's mail, and transactional mail goes first within it: a transactional
reservation waits only behind other transactional mail (an arrival time of its own), and pushes the
shared arrival time forward, so bulk mail gives way to it instead of the other way round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from config.keys import Keys

# KEYS[1]: the realm's arrival-time key (all mail); KEYS[2]: prefix of the realm's hourly counters;
# KEYS[3]: the realm's transactional arrival-time key.
# ARGV: messages, per second (0: none), tolerance in seconds, per hour (0: none), first (1: transactional).
# Returns {reserved (1/0), wait seconds as a string (Lua numbers are truncated to integers on return)}.
_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local n = tonumber(ARGV[1])
local per_second = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local per_hour = tonumber(ARGV[4])
if per_hour > 0 then
  local hour = math.floor(now / 3600)
  local counter = KEYS[2] .. ':' .. hour
  local used = tonumber(redis.call('GET', counter) or '0')
  if used + n > per_hour then
    return {0, tostring((hour + 1) * 3600 - now)}
  end
  redis.call('INCRBY', counter, n)
  redis.call('EXPIRE', counter, 7200)
end
local wait = 0
if per_second > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local own = tat
  if ARGV[5] == '1' then
    own = tonumber(redis.call('GET', KEYS[3]) or '0')
    if own < now then own = now end
    local new_own = own + n / per_second
    redis.call('SET', KEYS[3], tostring(new_own), 'PX', math.ceil((new_own - now) * 1000) + 1000)
  end
  wait = own - tolerance - now
  if wait < 0 then wait = 0 end
  local new_tat = tat + n / per_second
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return {1, tostring(wait)}
"""


@dataclass(frozen=True)
class Reservation:
    reserved: bool
    wait: float  # seconds to sleep before sending (reserved), or until the quota frees up (not reserved)


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: Keys, tolerance: float = 0.02) -> None:
        self.redis = client
        self.keys = keys
        # A little slack absorbs scheduling jitter without letting a 10-second window run more than
        # tolerance * rate messages (0.2% at 0.02 s) over the limit.
        self.tolerance = tolerance
        self._script = client.register_script(_RESERVE)

    def reserve(
        self, realm: str, count: int, per_second: float | None, per_hour: int | None, *, first: bool = False
    ) -> Reservation:
        """Reserve `count` messages; `first`: transactional mail, which bulk mail gives way to."""
        if not per_second and not per_hour:
            return Reservation(True, 0.0)
        keys = [self.keys.rate_window(realm, "tat"), self.keys.rate_window(realm, "hour"),
                self.keys.rate_window(realm, "tat-first")]  # fmt: skip
        reserved, wait = self._script(
            keys=keys, args=[count, per_second or 0, self.tolerance, per_hour or 0, 1 if first else 0]
        )
        return Reservation(bool(int(reserved)), float(wait))

    def acquire(self, realm: str, count: int, per_second: float | None, per_hour: int | None,
                *, max_wait: float) -> Reservation:  # fmt: skip
        """Reserve and sleep until the messages may go; a wait beyond `max_wait` is returned unslept.

        A reservation that is not slept is still spent; callers that reschedule instead of sleeping
        (a long hourly wait) get `reserved=False` and nothing was taken.
        """
        reservation = self.reserve(realm, count, per_second, per_hour)
        if reservation.reserved and 0 < reservation.wait <= max_wait:
            time.sleep(reservation.wait)
            return Reservation(True, 0.0)
        return reservation
