"""Who is alive: a heartbeat per worker process, claims held by a process, and the registry of consumers.

Why: the broker's own recovery of a dead worker's messages waits out a visibility timeout that must be
longer than any task may run (minutes), so a password reset held by a killed worker would arrive after its
link expired. Instead, as Dramatiq's Redis broker and Sidekiq's reliable fetch do, every worker process
beats (a key that expires one lease after the last beat) and what it holds is marked with its name:

- a job or bulk chunk it works on: a claim `claim:<job>` = "<process>|<thread>" (Claims below). Another
  worker may take a claim over as soon as the holder's heartbeat is gone, however long tasks may run;
- a broker message its consumer took: the consumer renews the message's lease in the broker's unacked
  index on every beat (worker/liveness/leases.py), and the broker hands back a message whose lease lapsed;
- the queues its consumer serves: the registry `workers` (LiveWorkers), so whatever waits on a worker
  (`settings test`, `wait_for_result`, `health`) can say at once that nobody serves a queue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from config.keys import Keys

log = logging.getLogger(__name__)

# A registry entry nobody refreshed for this long is removed by the next writer (a host that vanished).
FORGET_AFTER_S = 86_400


def process_name() -> str:
    """This process's name in heartbeats and claims: host, pid and a token (a pid can be reused)."""
    global _name, _name_pid
    if _name is None or _name_pid != os.getpid():  # recomputed in a forked child
        _name, _name_pid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}", os.getpid()
    return _name


_name: str | None = None
_name_pid: int | None = None


def process_gone(process: str) -> bool:
    """True when `process` (a process_name()) ran on this host and has exited; other hosts: unknown."""
    host, _, rest = process.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Heartbeat:
    """This process's heartbeat: a key that lives one lease past the last beat, renewed by a thread.

    Started on first use (a forked child starts its own: threads do not survive a fork).
    """

    def __init__(self, client: redis.Redis, keys: Keys, lease: float, *, process: str | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.lease = lease
        self.process = process or process_name()
        self.pid = os.getpid()
        self._started = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.after_beat: list[Callable[[], None]] = []  # run by the beating thread after each beat

    def ensure_started(self) -> str:
        """Beat now (so a claim taken next is backed by a live heartbeat) and keep beating; the name."""
        if not self._started:
            with self._lock:
                if not self._started:
                    self.beat()
                    threading.Thread(target=self._run, name="mailworker-heartbeat", daemon=True).start()
                    self._started = True
        return self.process

    def beat(self) -> None:
        self.redis.set(self.keys.alive(self.process), "1", px=int(self.lease * 1000))

    def stop(self) -> None:
        """A clean exit: what this process still holds may be taken over at once."""
        self._stop.set()
        if self._started and os.getpid() == self.pid:  # a forked child closing its parent's copy: not ours
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(self.keys.alive(self.process))

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 5):
            try:
                self.beat()
                for hook in self.after_beat:
                    hook()
            except redis.RedisError as error:  # Redis restarting: beat again next round
                log.warning("heartbeat of %s failed: %s", self.process, error)


# KEYS[1] the claim. ARGV: holder ("<process>|<thread>"), ttl seconds, the alive-key prefix.
# 1: claimed (or held already by this holder); 2: taken over from a holder whose process is dead; 0: busy.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
if current then
  local process = string.match(current, '^(.*)|')
  if process and redis.call('EXISTS', ARGV[3] .. process) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
if current then return 2 end
return 1
"""

# KEYS[1] the claim. ARGV: holder. Deletes it only when this holder has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CLAIMED, TAKEN_OVER, BUSY = 1, 2, 0


class Claims:
    """ "This job (or chunk) is worked on by that process": one holder at a time, freed when it dies.

    The claim's own TTL is only a backstop (the task time limit): a dead holder is recognised by its
    missing heartbeat, within one lease.
    """

    def __init__(self, client: redis.Redis, keys: Keys, heartbeat: Heartbeat, ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.heartbeat = heartbeat
        self.ttl = ttl
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        # Claims whose release could not reach Redis (a restart, a Sentinel failover), with their holder.
        # Left alone, such a claim outlives its job by the task time limit while this process lives, and
        # every redelivery of the job waits for it: released on the next beat, or the next claim.
        self._unreleased: list[tuple[str, str]] = []
        self._unreleased_lock = threading.Lock()
        heartbeat.after_beat.append(self.release_unreleased)

    def holder(self) -> str:
        return f"{self.heartbeat.ensure_started()}|{threading.get_ident()}"

    def claim(self, key: str) -> int:
        """CLAIMED, TAKEN_OVER (the previous holder's process is dead) or BUSY."""
        self.release_unreleased()
        # A free claim (nearly always) is taken with one SET NX, what the script does for a missing key;
        # the script's GET and EVALSHA are only needed when someone holds it (two Redis commands a job).
        if self.redis.set(key, self.holder(), nx=True, ex=self.ttl):
            return CLAIMED
        result = int(self._claim(keys=[key], args=[self.holder(), self.ttl, self.keys.alive_prefix()]))
        if result == BUSY and self._holder_died_here(key):
            # A pool process of this host killed (the OOM killer): its heartbeat key lives on for up to
            # a lease, but the process is gone. Its key goes now, so the claim is taken over at once.
            result = int(self._claim(keys=[key], args=[self.holder(), self.ttl, self.keys.alive_prefix()]))
        return result

    def _holder_died_here(self, key: str) -> bool:
        holder = self.redis.get(key)
        process = str(holder).partition("|")[0] if holder else ""
        if not process or not process_gone(process):
            return False
        self.redis.delete(self.keys.alive(process))
        return True

    def release(self, key: str) -> None:
        holder = self.holder()
        try:
            self._release(keys=[key], args=[holder])
        except redis.RedisError:
            with self._unreleased_lock:
                self._unreleased.append((key, holder))
            raise

    def drop(self, key: str) -> None:
        """Delete the claim whoever holds it: for a job that ended, which every holder would skip."""
        try:
            self.redis.delete(key)
        except redis.RedisError as error:  # the job ended all the same: released on the next beat
            log.warning("claim %s not released (Redis unavailable?): %s", key, error)
            with self._unreleased_lock:
                self._unreleased.append((key, self.holder()))

    def release_unreleased(self) -> None:
        """Release the claims an earlier release could not; raises (keeping them) while Redis is away."""
        with self._unreleased_lock:
            while self._unreleased:
                key, holder = self._unreleased[0]
                self._release(keys=[key], args=[holder])
                self._unreleased.pop(0)

    def wait_hint(self, key: str) -> float:
        """Seconds until a busy claim could be free: the holder's heartbeat lapses within one lease."""
        return min(float(self.heartbeat.lease), max(1.0, float(self.redis.ttl(key) or 1)))


@dataclass(frozen=True)
class WorkerInfo:
    node: str
    queues: tuple[str, ...]
    host: str
    pid: int
    beat: float
    started: float

    @property
    def name(self) -> str:
        """The Celery node name (e.g. transactional@host): the registry field is "<name>:<process>"."""
        return self.node.partition(":")[0]


class LiveWorkers:
    """The registry of consumers: which queues are served, by whom, as of their last beat."""

    def __init__(self, client: redis.Redis, keys: Keys, lease: float) -> None:
        self.redis = client
        self.keys = keys
        self.lease = lease

    def register(self, node: str, queues: list[str], started: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        entry = {"queues": sorted(queues), "host": socket.gethostname(), "pid": os.getpid(),
                 "beat": now, "started": started}  # fmt: skip
        self.redis.hset(self.keys.workers(), node, json.dumps(entry))

    def unregister(self, node: str) -> None:
        self.redis.hdel(self.keys.workers(), node)

    def all(self, now: float | None = None) -> tuple[list[WorkerInfo], list[WorkerInfo]]:
        """(live, lapsed) consumers; entries silent for a day are forgotten on the way."""
        now = time.time() if now is None else now
        live: list[WorkerInfo] = []
        lapsed: list[WorkerInfo] = []
        for node, raw in self.redis.hgetall(self.keys.workers()).items():
            try:
                data = json.loads(raw)
                info = WorkerInfo(str(node), tuple(data["queues"]), str(data["host"]), int(data["pid"]),
                                  float(data["beat"]), float(data["started"]))  # fmt: skip
            except (ValueError, KeyError, TypeError):
                self.redis.hdel(self.keys.workers(), node)
                continue
            if now - info.beat > FORGET_AFTER_S:
                self.redis.hdel(self.keys.workers(), node)
            (live if now - info.beat <= self.lease else lapsed).append(info)
        return live, lapsed

    def serving(self, queue: str, now: float | None = None) -> list[WorkerInfo]:
        return [info for info in self.all(now)[0] if queue in info.queues]


def no_worker_message(queue: str, lapsed: list[WorkerInfo], now: float | None = None, then: str = "") -> str:
    """One line for an operator: nobody serves `queue`, who did last, and (`then`) what happens now."""
    now = time.time() if now is None else now
    gone = [w for w in lapsed if queue in w.queues]
    last = max(gone, key=lambda w: w.beat) if gone else None
    since = f"; last seen: {last.node} {now - last.beat:.0f}s ago" if last else ""
    return f"no live worker consumes the {queue} queue (start one: `mailworker worker`){since}{then}"
