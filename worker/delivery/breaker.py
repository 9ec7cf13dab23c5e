"""A per-realm circuit breaker: a realm whose SMTP server does not answer stops costing worker processes.

Why: with the prefork pool, a connection to a black-holed server holds a whole worker process for the
realm's `connect_timeout` (10 s by default). Without a breaker, one realm whose server went dark takes
every process in turn and every other realm's password resets wait behind it.

How (state in Redis, shared by every worker; one hash per realm, see `Keys.breaker`):

- closed: jobs connect as usual. A failure to set up a session where the server never answered (timeout,
  refused, network error while connecting, in TLS, EHLO, AUTH or the NOOP of a pooled session) is counted;
  a reply of any kind (even 4xx/5xx) proves the server alive and resets the count. A failure during a
  transaction (MAIL, RCPT, DATA) never counts: the server answered the set-up, and a slow or lost reply to
  the end of DATA (RFC 5321 allows 10 minutes) often comes with the message delivered.
- open: `threshold` such failures within `window` seconds open the circuit for `cooloff` seconds. A job of
  that realm does not connect: the runner counts it as a failed attempt and re-schedules it after the
  cool-off (so it still dead-letters on schedule, by max attempts or expiry, and never in a tight loop).
- half-open: after the cool-off ONE job (the probe) may connect; the others wait for its outcome. A probe
  that fails re-opens the circuit with a doubled cool-off (capped at `max_cooloff`); any success closes it.

The state is keyed by realm and remembers the endpoint (host:port) it was measured on: an admin who points
the realm to another server starts from a closed circuit at once. Every key expires by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import Keys
from config.recent import Recent

CLOSED = "closed"  # connect freely (possibly with a few failures counted)
OPEN = "open"  # do not connect until the cool-off is over
PROBE = "probe"  # half-open, and this caller holds the probe: connect, then report success or failure
PROBING = "probing"  # half-open, another worker's probe is in flight: wait for it

# KEYS[1] the realm's hash. ARGV: now, endpoint, probe_ttl, key_ttl.
# Returns {state, failures, wait (string, seconds), last error}.
_CHECK = """
local h = redis.call('HMGET', KEYS[1], 'endpoint', 'failures', 'open_until', 'probe_until', 'error')
if not h[1] then return {'closed', 0, '0', ''} end
if h[1] ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return {'closed', 0, '0', ''}
end
local now = tonumber(ARGV[1])
local failures = tonumber(h[2] or '0')
local open_until = tonumber(h[3] or '0')
local err = h[5] or ''
if open_until == 0 then return {'closed', failures, '0', err} end
if now < open_until then return {'open', failures, tostring(open_until - now), err} end
local probe_until = tonumber(h[4] or '0')
if now < probe_until then return {'probing', failures, tostring(probe_until - now), err} end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[3])))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {'probe', failures, '0', err}
"""

# KEYS[1] the realm's hash. ARGV: now, endpoint, error, threshold, window, cooloff, max_cooloff, key_ttl.
# Returns 1 when this failure opened (or re-opened) the circuit, else 0.
_FAILURE = """
local h = redis.call('HMGET', KEYS[1], 'endpoint', 'failures', 'window_start', 'open_until', 'trips')
local now = tonumber(ARGV[1])
if h[1] and h[1] ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  h = {false, false, false, false, false}
end
local failures = tonumber(h[2] or '0')
local start = tonumber(h[3] or ARGV[1])
local open_until = tonumber(h[4] or '0')
local trips = tonumber(h[5] or '0')
if open_until == 0 and now - start > tonumber(ARGV[5]) then
  failures = 0
  start = now
end
failures = failures + 1
local opened = 0
if open_until > 0 then
  if now >= open_until then
    trips = trips + 1
    open_until = now + math.min(tonumber(ARGV[6]) * 2 ^ (trips - 1), tonumber(ARGV[7]))
    opened = 1
  end
elseif failures >= tonumber(ARGV[4]) then
  trips = 1
  open_until = now + tonumber(ARGV[6])
  opened = 1
end
redis.call('HSET', KEYS[1], 'endpoint', ARGV[2], 'failures', failures, 'window_start', tostring(start),
           'open_until', tostring(open_until), 'trips', trips, 'error', ARGV[3], 'probe_until', '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return opened
"""


@dataclass(frozen=True)
class Verdict:
    """What a job of the realm may do now."""

    state: str  # CLOSED, OPEN, PROBE or PROBING
    failures: int = 0  # connection failures counted in the current window
    wait: float = 0.0  # seconds until the cool-off (or the probe in flight) ends
    error: str = ""  # the last counted failure, for the job's error text

    @property
    def allowed(self) -> bool:
        return self.state in (CLOSED, PROBE)

    @property
    def tracked(self) -> bool:
        """True when the realm has breaker state: a success must then be reported to clear it."""
        return self.failures > 0 or self.state == PROBE


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        threshold: int = 3,
        window: float = 60.0,
        cooloff: float = 30.0,
        max_cooloff: float = 240.0,
        recent_seconds: float = 0.0,
    ) -> None:
        if threshold < 1 or window <= 0 or cooloff <= 0:
            raise ValueError("threshold, window and cooloff must be positive")
        self.redis = client
        self.keys = keys
        # "No failures here" is trusted for a moment (config/recent.py): a realm's healthy jobs cost no
        # look-up; a breaker another process opens is seen within that moment, this process's at once.
        self._closed: Recent[str, bool] = Recent(recent_seconds)
        self.threshold = threshold
        self.window = window
        self.cooloff = cooloff
        self.max_cooloff = max(max_cooloff, cooloff)
        # The state outlives any window, cool-off and probe, then goes away by itself (bounded memory).
        self.key_ttl = int(2 * (self.window + self.max_cooloff)) + 60
        self._check = client.register_script(_CHECK)
        self._failure = client.register_script(_FAILURE)

    def check(
        self, realm: str, endpoint: str, *, probe_ttl: float = 30.0, now: float | None = None
    ) -> Verdict:
        """May a job of `realm` connect to `endpoint` now? One Redis round trip (a script)."""
        now = time.time() if now is None else now
        # A realm without failures has no hash, and the script answers "closed" for it doing nothing: one
        # EXISTS says the same with one Redis command instead of two (EVALSHA and its HMGET), per job.
        key = self.keys.breaker(realm)
        if self._closed.get(realm, lambda: not self.redis.exists(key), keep=lambda closed: closed):
            return Verdict(CLOSED)
        raw: Any = self._check(
            keys=[self.keys.breaker(realm)], args=[repr(now), endpoint, probe_ttl, self.key_ttl]
        )
        state, failures, wait, error = raw
        return Verdict(_text(state), int(failures), max(0.0, float(_text(wait))), _text(error))

    def failure(self, realm: str, endpoint: str, error: str, *, now: float | None = None) -> bool:
        """Count a connection failure; True when it opened (or re-opened) the circuit."""
        now = time.time() if now is None else now
        args: list[str | int | float] = [repr(now), endpoint, error[:500], self.threshold, self.window]
        args += [self.cooloff, self.max_cooloff, self.key_ttl]
        opened: Any = self._failure(keys=[self.keys.breaker(realm)], args=args)
        self._closed.forget(realm)
        return bool(int(opened))

    def success(self, realm: str) -> None:
        """The realm's server answered: close the circuit and forget the failures."""
        self.redis.delete(self.keys.breaker(realm))

    def state(self, realm: str) -> dict[str, str]:
        """The raw state (for operators and tests); empty when closed without failures."""
        raw: Any = self.redis.hgetall(self.keys.breaker(realm))
        return {_text(k): _text(v) for k, v in raw.items()}

    def tripped(self, realms: list[str]) -> dict[str, bool]:
        """Whether each realm's circuit is open or half-open, in one round trip (/metrics)."""
        pipe = self.redis.pipeline(transaction=False)
        for realm in realms:
            pipe.hget(self.keys.breaker(realm), "open_until")
        return {
            realm: float(_text(until or 0)) > 0 for realm, until in zip(realms, pipe.execute(), strict=True)
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
