"""Bulk jobs in Redis: the recipients in chunks, per-recipient done bits, counters, state, cancel.

Keys of one job (config/keys.py), a fixed handful however many recipients it has:

    bulk:{job}                 hash: realm, template, locale, context, total, chunks, chunk_size, state,
                               sent, failed, cancelled, suppressed, chunks_done, created_at, started_at, finished_at
    bulk:{job}:chunk:{n}       string: JSON array of the chunk's recipients, deleted when the chunk is over
    bulk:{job}:done            bitmap, one bit per recipient: settled (sent, failed, cancelled or suppressed)
    bulk:{job}:chunks-done     bitmap, one bit per chunk
    bulk:{job}:chunk:{n}:claim the worker process running that chunk now (worker/liveness/heartbeat.py)

Counting is exactly-once by construction: a recipient is counted in the same Lua script that sets its bit,
and only when the bit was not set yet, so a chunk redelivered after a crash (or run twice) neither sends
nor counts anyone twice. State: loading -> queued -> running -> done | cancelled | failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from config.errors import NotFound
from config.keys import Keys
from worker.outcomes.outcome import BULK_FINISHED, Outcome

LOADING, QUEUED, RUNNING, DONE, CANCELLED, FAILED = (
    "loading",
    "queued",
    "running",
    "done",
    "cancelled",
    "failed",
)
FINISHED_STATES = frozenset({DONE, CANCELLED, FAILED})
BULK_JOB_PREFIX = "bulk-"  # bulk job ids; a chunk's pending-ledger entry is "<job id>:<chunk>"

# KEYS: job hash, done bitmap. ARGV: comma-separated indices sent, failed, cancelled, suppressed.
# Returns the job's state ("gone" when the job expired or was deleted).
_COMMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local fields = {'sent', 'failed', 'cancelled', 'suppressed'}
for k = 1, 4 do
  local n = 0
  for index in string.gmatch(ARGV[k], '%d+') do
    if redis.call('SETBIT', KEYS[2], tonumber(index), 1) == 0 then n = n + 1 end
  end
  if n > 0 then redis.call('HINCRBY', KEYS[1], fields[k], n) end
end
return redis.call('HGET', KEYS[1], 'state')
"""

# KEYS: job hash, chunks bitmap, chunk recipients. ARGV: chunk number, now. Returns {the job's state, 1 when
# this call ended the job (its last chunk, counted once) else 0}.
_FINISH_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', 0} end
local ended = 0
if redis.call('SETBIT', KEYS[2], tonumber(ARGV[1]), 1) == 0 then
  local done = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
  if done >= tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
    local state = redis.call('HGET', KEYS[1], 'state')
    if state == 'queued' or state == 'running' then redis.call('HSET', KEYS[1], 'state', 'done') end
    redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
    ended = 1
  end
end
redis.call('DEL', KEYS[3])
return {redis.call('HGET', KEYS[1], 'state'), ended}
"""

# KEYS: job hash. ARGV: now. First chunk to run: queued -> running, started_at. Returns the state.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running')
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
  state = 'running'
end
return state
"""

# KEYS: job hash. ARGV: new state, error text. Only a job still queued or running changes state.
_STOP = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return state or 'gone' end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[2]) end
return ARGV[1]
"""


@dataclass(frozen=True)
class BulkJob:
    """A job's fixed description, as the chunk tasks read it."""

    id: str
    realm: str
    template: str
    locale: str | None
    context: dict[str, Any]
    total: int
    chunks: int
    chunk_size: int
    state: str
    created_at: float
    error: str | None = None

    def first_index(self, chunk: int) -> int:
        return chunk * self.chunk_size


@dataclass(frozen=True)
class BulkProgress:
    job_id: str
    realm: str
    template: str
    state: str
    total: int
    sent: int
    failed: int
    cancelled: int
    suppressed: int  # on the realm's suppression list: never sent (worker/bounces/suppression.py)
    pending: int
    rate: float  # messages sent per second since the first chunk started
    chunks: int
    chunks_done: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES and self.chunks_done >= self.chunks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _indices(values: Iterable[int]) -> str:
    return ",".join(map(str, values))


class BulkJobs:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        ttl: int,
        on_finished: Callable[[BulkProgress], Any] | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl  # every key of a job expires this long after creation
        # Called once per job, by the worker whose chunk ended it (done, cancelled or failed): the
        # `bulk.finished` outcome (worker/runtime.py), so webhooks report a bulk job once, not per recipient.
        self.on_finished = on_finished
        self._commit = client.register_script(_COMMIT)
        self._finish = client.register_script(_FINISH_CHUNK)
        self._start = client.register_script(_START)
        self._stop = client.register_script(_STOP)

    # -- producer side -------------------------------------------------------------------------------

    def create(self, job_id: str, *, realm: str, template: str, locale: str | None, context: dict[str, Any],
               chunk_size: int) -> None:  # fmt: skip
        """The job hash in state `loading`: chunks are written next, tasks enqueued once all are in."""
        key = self.keys.bulk_job(job_id)
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={
            "realm": realm, "template": template, "locale": locale or "", "context": json.dumps(context),
            "chunk_size": chunk_size, "state": LOADING, "total": 0, "chunks": 0, "chunks_done": 0,
            "sent": 0, "failed": 0, "cancelled": 0, "created_at": repr(now),
        })  # fmt: skip
        pipe.expire(key, self.ttl)
        # The index forgets what expired with it, and expires with its last job.
        pipe.zadd(self.keys.bulk_jobs(), {job_id: now})
        pipe.zremrangebyscore(self.keys.bulk_jobs(), "-inf", f"({now - self.ttl}")
        pipe.expire(self.keys.bulk_jobs(), self.ttl)
        pipe.execute()

    def newest(self) -> list[str]:
        """Bulk job ids, newest first (those whose job has not expired)."""
        return [str(job_id) for job_id in self.redis.zrevrange(self.keys.bulk_jobs(), 0, -1)]

    def write_chunks(self, job_id: str, first_chunk: int, chunks: Sequence[Sequence[dict[str, Any]]]) -> None:
        """Store chunks `first_chunk`, `first_chunk + 1`, ... in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for offset, recipients in enumerate(chunks):
            payload = json.dumps(recipients, separators=(",", ":"), ensure_ascii=False)
            pipe.set(self.keys.bulk_chunk(job_id, first_chunk + offset), payload, ex=self.ttl)
        pipe.execute()

    def open(self, job_id: str, *, total: int, chunks: int) -> None:
        """All chunks are stored: allocate the bitmaps (with their expiry) and mark the job queued."""
        key = self.keys.bulk_job(job_id)
        pipe = self.redis.pipeline()
        # Setting the last bit to 0 allocates the whole bitmap now, so the expiry is set once, here.
        pipe.setbit(self.keys.bulk_done(job_id), max(total - 1, 0), 0)
        pipe.expire(self.keys.bulk_done(job_id), self.ttl)
        pipe.setbit(self.keys.bulk_chunks_done(job_id), max(chunks - 1, 0), 0)
        pipe.expire(self.keys.bulk_chunks_done(job_id), self.ttl)
        pipe.hset(key, mapping={"total": total, "chunks": chunks, "state": QUEUED if chunks else DONE})
        if not chunks:
            pipe.hset(key, "finished_at", repr(time.time()))
        pipe.execute()

    def discard(self, job_id: str, chunks: int) -> None:
        """Forget a job that never started (its recipients failed validation)."""
        self.redis.zrem(self.keys.bulk_jobs(), job_id)
        names = [self.keys.bulk_job(job_id), self.keys.bulk_done(job_id), self.keys.bulk_chunks_done(job_id)]
        names += [self.keys.bulk_chunk(job_id, n) for n in range(chunks)]
        for start in range(0, len(names), 1000):
            self.redis.delete(*names[start : start + 1000])

    # -- worker side ---------------------------------------------------------------------------------

    def _hash(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.bulk_job(job_id))
        if not raw:
            raise self.unknown(job_id)
        return {str(name): str(value) for name, value in raw.items()}

    def job(self, job_id: str) -> BulkJob:
        raw = self._hash(job_id)
        return BulkJob(
            id=job_id,
            realm=raw["realm"],
            template=raw["template"],
            locale=raw.get("locale") or None,
            context=json.loads(raw.get("context") or "{}"),
            total=int(raw["total"]),
            chunks=int(raw["chunks"]),
            chunk_size=int(raw["chunk_size"]),
            state=raw["state"],
            created_at=float(raw["created_at"]),
            error=raw.get("error"),
        )

    def recipients(self, job_id: str, chunk: int) -> list[dict[str, Any]] | None:
        """The chunk's stored recipients; None once the chunk is over (its list is deleted then)."""
        raw = self.redis.get(self.keys.bulk_chunk(job_id, chunk))
        return json.loads(raw) if raw is not None else None

    def done_flags(self, job_id: str, first: int, count: int) -> list[bool]:
        """Done bit of recipients first .. first+count-1, read in one GETRANGE."""
        if count <= 0:
            return []
        # BITFIELD rather than GETRANGE: the store's client decodes replies as UTF-8, which raw bits are not.
        start_byte, end_byte = first // 8, (first + count - 1) // 8
        args: list[Any] = []
        for byte in range(start_byte, end_byte + 1):
            args += ["GET", "u8", byte * 8]
        data = self.redis.execute_command("BITFIELD", self.keys.bulk_done(job_id), *args)
        return [bool(data[i // 8 - start_byte] & (0x80 >> (i % 8))) for i in range(first, first + count)]

    def start(self, job_id: str) -> str:
        return str(self._start(keys=[self.keys.bulk_job(job_id)], args=[repr(time.time())]))

    def commit(self, job_id: str, *, sent: Iterable[int] = (), failed: Iterable[int] = (),
               cancelled: Iterable[int] = (), suppressed: Iterable[int] = ()) -> str:  # fmt: skip
        """Set the recipients' done bits and count the newly settled ones; returns the job's state."""
        keys = [self.keys.bulk_job(job_id), self.keys.bulk_done(job_id)]
        args = [_indices(sent), _indices(failed), _indices(cancelled), _indices(suppressed)]
        return str(self._commit(keys=keys, args=args))

    def finish_chunk(self, job_id: str, chunk: int) -> str:
        """The chunk has nothing left: count it once, drop its recipients, end the job with its last chunk."""
        keys = [
            self.keys.bulk_job(job_id),
            self.keys.bulk_chunks_done(job_id),
            self.keys.bulk_chunk(job_id, chunk),
        ]
        state, ended = self._finish(keys=keys, args=[chunk, repr(time.time())])
        if int(ended) and self.on_finished is not None:
            self.on_finished(self.progress(job_id))
        return str(state)

    def entry_ended(self, entry_id: str) -> bool:
        """For the pending-job sweeper: has the job's fan-out ("<job>") or the chunk ("<job>:<n>") ended?"""
        job_id, _, chunk = entry_id.partition(":")
        raw = self.redis.hmget(self.keys.bulk_job(job_id), "state", "chunks", "enqueued")
        if raw[0] is None:
            return True  # the job expired or was discarded: nothing left to publish
        if chunk:
            return bool(self.redis.getbit(self.keys.bulk_chunks_done(job_id), int(chunk)))
        return str(raw[0]) in FINISHED_STATES or int(raw[2] or 0) >= int(raw[1] or 0)

    def fan_out_position(self, job_id: str) -> int:
        """Chunk tasks already enqueued by mail.bulk.start (a redelivered start resumes there)."""
        return int(self.redis.hget(self.keys.bulk_job(job_id), "enqueued") or 0)

    def set_fan_out_position(self, job_id: str, chunks: int) -> None:
        self.redis.hset(self.keys.bulk_job(job_id), "enqueued", chunks)

    def next_attempt(self, job_id: str, chunk: int) -> int:
        """Attempts of one chunk across retries and redeliveries (a field of the job hash, not a key)."""
        return int(self.redis.hincrby(self.keys.bulk_job(job_id), f"attempts:{chunk}", 1))

    def note_ambiguous(self, job_id: str, indices: list[int]) -> list[int]:
        """Recipients whose data went out without a reply: their counts so far (fields of the job hash)."""
        pipe = self.redis.pipeline(transaction=False)
        for index in indices:
            pipe.hincrby(self.keys.bulk_job(job_id), f"ambiguous:{index}", 1)
        return [int(n) for n in pipe.execute()]

    def fail(self, job_id: str, error: str) -> str:
        """The realm's settings are wrong: the job stops; later chunks dead-letter without connecting."""
        return str(self._stop(keys=[self.keys.bulk_job(job_id)], args=[FAILED, error]))

    # -- anyone --------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """Stop the job: chunks not sent yet are dropped and counted as cancelled. Returns the new state."""
        state = str(self._stop(keys=[self.keys.bulk_job(job_id)], args=[CANCELLED, ""]))
        if state == "gone":
            raise self.unknown(job_id)
        return state

    def unknown(self, job_id: str) -> NotFound:
        """The error for a job that is not there; also what the HTTP API says of another realm's job."""
        return NotFound(f"no bulk job {job_id!r} (unknown, or expired after {self.ttl // 86400} days)")

    def progress(self, job_id: str, now: float | None = None) -> BulkProgress:
        raw = self._hash(job_id)
        total, sent, failed, cancelled, suppressed = (
            int(raw.get(name) or 0) for name in ("total", "sent", "failed", "cancelled", "suppressed")
        )
        started = float(raw["started_at"]) if raw.get("started_at") else None
        finished = float(raw["finished_at"]) if raw.get("finished_at") else None
        end = finished if finished is not None else (now if now is not None else time.time())
        elapsed = end - started if started is not None else 0.0
        return BulkProgress(
            job_id=job_id,
            realm=raw.get("realm", ""),
            template=raw.get("template", ""),
            state=raw.get("state", ""),
            total=total,
            sent=sent,
            failed=failed,
            cancelled=cancelled,
            suppressed=suppressed,
            pending=max(total - sent - failed - cancelled - suppressed, 0),
            rate=round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            chunks=int(raw.get("chunks") or 0),
            chunks_done=int(raw.get("chunks_done") or 0),
            created_at=float(raw.get("created_at") or 0),
            started_at=started,
            finished_at=finished,
            error=raw.get("error"),
        )


def finished_outcome(progress: BulkProgress) -> Outcome:
    """A bulk job's end as one outcome, with its counts (the webhook's `data`)."""
    counts = {
        name: getattr(progress, name) for name in ("total", "sent", "failed", "cancelled", "suppressed")
    }
    return Outcome(BULK_FINISHED, progress.realm, progress.job_id, progress.template, reason=progress.state,
                   at=progress.finished_at or time.time(), bulk=True,
                   details={"state": progress.state, **counts})  # fmt: skip
