"""The plain-JSON ingest: how a producer in any language (Keycloak is Java) enqueues a job.

A producer RPUSHes one JSON object per job onto the list `<MAILWORKER_KEY_PREFIX>:ingest` of the store's
Redis (`mailworker:ingest` by default), with any Redis client:

    {"type": "email", "realm": "acme", "template": "password-reset", "to": "alice@example.com",
     "locale": "de", "context": {...}, "idempotency_key": "reset-42"}
    {"type": "event", "realm": "acme", "event": {"type": "UPDATE_PASSWORD", "user": {"email": ...}}}

`mailworker ingest` moves each entry atomically to a processing list of its own (BLMOVE), validates and
enqueues it through tasks.api (the same rules as Python producers), then removes it. A consumer killed in
between finds the entry in its processing list when it starts again: nothing is lost (at least once).
The consumer keeps a record of the entry in hand (one hash per consumer: the entry's digest, a token, the
tries); an entry without an `idempotency_key` of its own is enqueued with `ingest:<token>`, so an entry
re-processed after a crash is the same job and is delivered once. An entry that breaks a rule becomes a
dead letter with reason "invalid" and the rule it broke; one the consumer fails on for any other reason
(a bug, here or in a library) a dead letter with reason "internal"; one in hand when the process died
twice (killed for memory, a crash in C code) is dead-lettered "internal" at the next start, untried. The
consumer goes on with the next entry: only Redis or broker outages and its own configuration stop it.

Why not the Celery message protocol written to Redis by the producer: it is Celery's internal format
(protocol 2 headers, a base64 body in a kombu envelope, delivery tags, priority-suffixed queue keys, the
optional global key prefix) and changes with Celery and kombu versions; a producer that gets one detail
wrong enqueues a message the worker cannot read, with no error at the producer. The list takes one RPUSH
of a JSON object anyone can write, and every mistake in it is reported as a dead letter naming the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from kombu.exceptions import OperationalError

from config.errors import ConfigError, InvalidInput, StoreUnavailable
from config.keys import Keys
from config.redis import connect
from config.sentinel import Sentinel
from worker.jobs.deadletters import DeadLetter, DeadLetterStore
from worker.jobs.model import MAX_JSON_DEPTH

log = logging.getLogger("mailworker.ingest")

MAX_ENTRY_BYTES = 256 * 1024
RAW_KEPT = 2000  # characters of an entry kept in its dead letter, for the producer's developer
EMAIL_FIELDS = (
    "type",
    "realm",
    "template",
    "to",
    "to_name",
    "locale",
    "context",
    "idempotency_key",
    "expires_in",
)
EVENT_FIELDS = ("type", "realm", "event")
MAX_BACKOFF_S = 30.0
# Tries of one entry that may end with the process before the entry counts as what killed it.
MAX_TRIES = 2
DIED_TWICE = "the ingest consumer died twice while handling this entry"
ERROR_KEPT = 1000  # characters of an unexpected exception's message kept in the dead letter
CONSUMER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

# Failures of the infrastructure, not of the entry: the entry stays in the processing list and is tried
# again once Redis or the broker answers, or the store holds settings again (wiped, not restored yet).
TRANSIENT = (redis.RedisError, OperationalError, StoreUnavailable)


@dataclass(frozen=True)
class Handled:
    # "enqueued", "ignored" (an event type the realm does not notify), "invalid" (broke a rule) or
    # "internal" (the consumer failed on it, or died with it in hand twice)
    outcome: str
    job_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class InHand:
    """A consumer's record of the entry it handles (Keys.ingest_in_hand), cleared when the entry leaves
    the processing list. `tries` counts the tries begun and not known to have ended otherwise than with
    the process: a Redis or broker failure takes its try back."""

    digest: str  # sha256 of the entry as Redis holds it
    token: str  # stable while the entry is in hand: its job id after a crash is the one it had
    tries: int

    @property
    def poison(self) -> bool:
        return self.tries > MAX_TRIES


def take_up(record: InHand | None, digest: str, new_token: str, *, counted: bool = True) -> InHand:
    """The record for one more try of the entry with this digest.

    A record of the same entry means earlier tries ended with the process (the record goes with the
    entry): the same token, one try more. `counted=False`: this process's own last try of it failed on
    the infrastructure and could not take its try back, so the record counts this one already.
    """
    if record is None or record.digest != digest:
        return InHand(digest, new_token, 1)
    return InHand(digest, record.token, record.tries + 1 if counted else record.tries)


def idempotency_key_for(entry: dict[str, Any], token: str) -> str | None:
    """The entry's own key, else `ingest:<token>` of the entry in hand: re-processed, it is the same job."""
    if entry["type"] == "event":
        event = entry.get("event")
        # The event's own id is its key (worker/jobs/events.py): the same event pushed twice is one job.
        return None if isinstance(event, dict) and event.get("id") is not None else f"ingest:{token}"
    own = entry.get("idempotency_key")
    return own if own is not None else f"ingest:{token}"


def describe(error: BaseException) -> str:
    """One line naming the exception's type: 'OverflowError: int too large to convert to float'."""
    message = " ".join(str(error).split())[:ERROR_KEPT]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def logged(error: str | None) -> str:
    """An entry's error for a log line: the rule it broke may quote a field name of 200 KB, and a producer
    pushing such entries must not flood the log. The dead letter keeps all of it."""
    text = error or ""
    return text if len(text) <= ERROR_KEPT else f"{text[:ERROR_KEPT]}... ({len(text)} characters)"


def digest_of(raw: bytes | str) -> str:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def parse_entry(raw: bytes | str) -> dict[str, Any]:
    """The entry's JSON object, checked for shape (the fields' values are checked by tasks.api)."""
    return check_entry(read_entry(raw))


def read_entry(raw: bytes | str) -> Any:
    """The entry's JSON value; an entry over MAX_ENTRY_BYTES is refused before it is parsed at all."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise InvalidInput.one("entry", f"is {len(raw)} bytes; the limit is {MAX_ENTRY_BYTES}")
    try:
        return json.loads(raw)
    except ValueError as error:  # also invalid UTF-8
        raise InvalidInput.one("entry", f"is not JSON ({error})") from None
    except RecursionError:
        raise InvalidInput.one(
            "entry", f"is nested too deeply to read (context and event: at most {MAX_JSON_DEPTH} levels)"
        ) from None


def check_entry(entry: Any) -> dict[str, Any]:
    """A parsed entry's shape: an object of a known type with its fields."""
    if not isinstance(entry, dict):
        raise InvalidInput.one("entry", 'must be a JSON object like {"type": "email", "realm": ...}')
    kind = entry.setdefault("type", "email")
    if kind not in ("email", "event"):
        raise InvalidInput.one("type", f'must be "email" or "event", not {kind!r}')
    allowed = EMAIL_FIELDS if kind == "email" else EVENT_FIELDS
    unknown = sorted(str(name) for name in entry if name not in allowed)
    if unknown:
        raise InvalidInput.one(
            unknown[0], f"is not a field of a {kind} entry; fields: {', '.join(allowed[1:])}"
        )
    required = ("realm", "template", "to") if kind == "email" else ("realm", "event")
    for name in required:
        if entry.get(name) is None:
            raise InvalidInput.one(name, f"is required in a {kind} entry")
    return entry


def enqueue(entry: dict[str, Any], token: str) -> str | None:
    """Validate and enqueue like a Python producer; the job id, or None for an event that sends nothing.

    `token` names the entry in hand (InHand.token): see idempotency_key_for.
    """
    from tasks import api

    key = idempotency_key_for(entry, token)
    if entry["type"] == "event":
        return api.publish_event(entry["realm"], entry["event"], idempotency_key=key)
    fields = {name: entry.get(name) for name in EMAIL_FIELDS[4:]}
    fields["idempotency_key"] = key
    return api.send_email(entry["realm"], entry["template"], entry["to"], **fields)


class IngestConsumer:
    """Moves ingest entries into Celery. One consumer per `name`: the name owns a processing list."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        dead: DeadLetterStore,
        *,
        name: str = "default",
        enqueue: Callable[[dict[str, Any], str], str | None] = enqueue,
        count_dead: Callable[[str], None] | None = None,
    ) -> None:
        if not CONSUMER_NAME.match(name):
            raise InvalidInput.one(
                "--name", "must be 1-64 letters, digits, '.', '_' or '-' (it is part of a Redis key)"
            )
        self.redis = client
        self.keys = keys
        self.dead = dead
        self.name = name
        self.enqueue = enqueue
        self.count_dead = count_dead
        self.source = keys.ingest()
        self.processing = keys.ingest_processing(name)
        self.in_hand = keys.ingest_in_hand(name)
        # The digest of an entry whose last try here failed on the infrastructure and whose record could
        # not take that try back (Redis was down): the next try of it is not one more.
        self._uncounted: str | None = None

    def handle(self, raw: bytes | str) -> Handled:
        """Enqueue one entry, or dead-letter it; then drop it from the processing list.

        Raises only for the infrastructure (TRANSIENT) or the consumer's own configuration (ConfigError):
        then the entry stays in the processing list for the next try.
        """
        digest = digest_of(raw)
        in_hand = take_up(self._record(), digest, uuid.uuid4().hex, counted=digest != self._uncounted)
        if in_hand.poison:
            # Not even parsed: reading it may be what killed the process.
            handled = Handled("internal", self._dead_letter(raw, "internal", DIED_TWICE), DIED_TWICE)
            log.error("ingest entry dead-lettered: %s", DIED_TWICE,
                      extra={"outcome": "internal", "job_id": handled.job_id})  # fmt: skip
            self._finish(raw)
        else:
            self.redis.hset(
                self.in_hand, mapping={"digest": digest, "token": in_hand.token, "tries": in_hand.tries}
            )
            self._uncounted = None
            try:
                handled = self._handle(raw, in_hand.token)
                self._finish(raw)
            except (*TRANSIENT, ConfigError):
                self._take_back(in_hand)
                raise
        extra = {"outcome": handled.outcome, "job_id": handled.job_id}
        if handled.outcome == "invalid":
            log.warning("ingest entry invalid: %s", logged(handled.error), extra=extra)
        elif handled.outcome != "internal":  # logged where it happened, with its traceback
            log.info("ingest entry %s", handled.outcome, extra=extra)
        return handled

    def _handle(self, raw: bytes | str, token: str) -> Handled:
        entry: Any = None  # parsed once: the dead letter reads its fields from the same value
        try:
            entry = read_entry(raw)
            job_id = self.enqueue(check_entry(entry), token)
            return Handled("enqueued" if job_id else "ignored", job_id)
        except (*TRANSIENT, ConfigError):
            raise
        except InvalidInput as error:
            return Handled("invalid", self._dead_letter(raw, "invalid", str(error), entry), str(error))
        except Exception as error:
            # Whatever it is, it is this entry's: stopping would only stop every entry behind it.
            message = describe(error)
            job_id = self._dead_letter(raw, "internal", message, entry)
            log.error("ingest entry dead-lettered: %s", message, exc_info=True,
                      extra={"outcome": "internal", "job_id": job_id})  # fmt: skip
            return Handled("internal", job_id, message)

    def _finish(self, raw: bytes | str) -> None:
        pipe = self.redis.pipeline(transaction=True)  # one step: the record must not outlive its entry
        pipe.lrem(self.processing, 1, cast(str, raw))  # bytes or str, as Redis gave it
        pipe.delete(self.in_hand)
        pipe.execute()

    def _record(self) -> InHand | None:
        fields = {_text(k): _text(v) for k, v in self.redis.hgetall(self.in_hand).items()}
        try:
            return InHand(fields["digest"], fields["token"], int(fields["tries"]))
        except (KeyError, ValueError):
            return None

    def _take_back(self, in_hand: InHand) -> None:
        """The try failed on the infrastructure, not with the process: it does not count."""
        try:
            self.redis.hset(self.in_hand, "tries", in_hand.tries - 1)
        except redis.RedisError:
            # Counted once too often; a process that exits before its next try leaves it so, and the
            # next process takes it for a death (a dead letter needs two of those).
            self._uncounted = in_hand.digest

    def _dead_letter(self, raw: bytes | str, reason: str, error: str, entry: Any = None) -> str:
        """`entry`: the parsed value when there is one (never parsed again here: it may be what hurts)."""
        text = raw[:RAW_KEPT].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:RAW_KEPT]
        entry = entry if isinstance(entry, dict) else {}

        def field(name: str) -> str:
            value = entry.get(name)
            return value[:254] if isinstance(value, str) else ""

        realm = field("realm")
        event = entry.get("event")
        event_type = event.get("type") if isinstance(event, dict) else None
        letter = DeadLetter(
            job_id=f"ingest-{uuid.uuid4().hex}",
            realm=realm,
            template=field("template") or (f"event {event_type}"[:80] if isinstance(event_type, str) else ""),
            to=field("to"),
            reason=reason,
            error=error,
            attempts=0,
            task="ingest",
            job={"ingest_entry": text[:RAW_KEPT]},
        )
        self.dead.add(letter)
        if self.count_dead is not None and realm:
            self.count_dead(realm)
        return letter.job_id

    def recover(self) -> int:
        """Finish what a killed consumer of this name left in its processing list (oldest first)."""
        done = 0
        while True:
            leftovers = self.redis.lrange(self.processing, 0, 0)
            if not leftovers:
                return done
            self.handle(leftovers[0])
            done += 1

    def step(self, block: float = 0) -> bool:
        """Take and handle one entry; with `block` > 0 wait that many seconds for one. False when none came."""
        if block > 0:
            raw = self.redis.blmove(
                self.source, self.processing, cast(int, block), "LEFT", "RIGHT"
            )  # seconds, float ok
        else:
            raw = self.redis.lmove(self.source, self.processing, "LEFT", "RIGHT")
        if raw is None:
            return False
        self.handle(raw)
        return True

    def drain(self) -> int:
        """Recover, then handle entries until the list is empty; returns how many were handled."""
        done = self.recover()
        while self.step():
            done += 1
        return done

    def run(self, stop: threading.Event, *, block: float = 1.0) -> None:
        """Consume until `stop` is set. Redis or broker outages are waited out, with growing pauses."""
        backoff = 0.5
        recovered = False
        while not stop.is_set():
            try:
                if not recovered:
                    if done := self.recover():
                        log.info("ingest: re-processed %d entry(ies) left by an earlier run", done)
                    recovered = True
                self.step(block)
                backoff = 0.5
            except TRANSIENT as error:
                log.warning("ingest: Redis or broker unavailable (%s); retrying in %.1fs", error, backoff)
                recovered = False  # the entry in hand stays in the processing list: take it up again
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def ingest_client(url: str, block: float, sentinel: Sentinel | None = None) -> redis.Redis:
    """A bytes client: a producer's invalid UTF-8 must become a dead letter, not a decode error here."""
    if url.startswith("memory://"):
        return connect(url)
    # The blocking pop waits `block` seconds for an entry: the socket waits longer than that.
    return connect(url, check=False, sentinel=sentinel, decode_responses=False, socket_timeout=block + 10)
