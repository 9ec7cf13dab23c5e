"""The plain-JSON ingest: how a producer in any language (Keycloak is Java) enqueues a job.

A producer RPUSHes one JSON object per job onto the list `<MAILWORKER_KEY_PREFIX>:ingest` of the store's
Redis (`mailworker:ingest` by default), with any Redis client:

    {"type": "email", "realm": "acme", "template": "password-reset", "to": "alice@example.com",
     "locale": "de", "context": {...}, "idempotency_key": "reset-42"}
    {"type": "event", "realm": "acme", "event": {"type": "UPDATE_PASSWORD", "user": {"email": ...}}}

`mailworker ingest` moves each entry atomically to a processing list of its own (BLMOVE), validates and
enqueues it through tasks.api (the same rules as Python producers), then removes it. A consumer killed in
between finds the entry in its processing list when it starts again: nothing is lost (at least once; an
`idempotency_key` makes a re-processed entry deliver once). An entry that breaks a rule becomes a dead
letter with reason "invalid" and the rule it broke; the consumer goes on with the next one.

Why not the Celery message protocol written to Redis by the producer: it is Celery's internal format
(protocol 2 headers, a base64 body in a kombu envelope, delivery tags, priority-suffixed queue keys, the
optional global key prefix) and changes with Celery and kombu versions; a producer that gets one detail
wrong enqueues a message the worker cannot read, with no error at the producer. The list takes one RPUSH
of a JSON object anyone can write, and every mistake in it is reported as a dead letter naming the field.
"""

from __future__ import annotations

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

from config.errors import InvalidInput
from config.keys import Keys
from worker.deadletters import DeadLetter, DeadLetterStore

log = logging.getLogger("mailworker.ingest")

MAX_ENTRY_BYTES = 256 * 1024
RAW_KEPT = 2000  # characters of an invalid entry kept in its dead letter, for the producer's developer
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
CONSUMER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

# Failures of the infrastructure, not of the entry: the entry stays in the processing list and is tried
# again once Redis or the broker answers.
TRANSIENT = (redis.RedisError, OperationalError)


@dataclass(frozen=True)
class Handled:
    outcome: str  # "enqueued", "ignored" (an event type the realm does not notify) or "invalid"
    job_id: str | None
    error: str | None = None


def parse_entry(raw: bytes | str) -> dict[str, Any]:
    """The entry's JSON object, checked for shape (the fields' values are checked by tasks.api)."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise InvalidInput.one("entry", f"is {len(raw)} bytes; the limit is {MAX_ENTRY_BYTES}")
    try:
        entry = json.loads(raw)
    except ValueError as error:  # also invalid UTF-8
        raise InvalidInput.one("entry", f"is not JSON ({error})") from None
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


def enqueue(entry: dict[str, Any]) -> str | None:
    """Validate and enqueue like a Python producer; the job id, or None for an event that sends nothing."""
    from tasks import api

    if entry["type"] == "event":
        return api.publish_event(entry["realm"], entry["event"])
    fields = {name: entry.get(name) for name in EMAIL_FIELDS[4:]}
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
        enqueue: Callable[[dict[str, Any]], str | None] = enqueue,
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

    def handle(self, raw: bytes | str) -> Handled:
        """Enqueue one entry, or dead-letter it; then drop it from the processing list.

        Raises only for the infrastructure (TRANSIENT) or the consumer's own configuration (ConfigError):
        then the entry stays in the processing list for the next try.
        """
        try:
            entry = parse_entry(raw)
            job_id = self.enqueue(entry)
            handled = Handled("enqueued" if job_id else "ignored", job_id)
        except InvalidInput as error:
            handled = Handled("invalid", self._dead_letter(raw, str(error)), str(error))
        self.redis.lrem(self.processing, 1, cast(str, raw))  # bytes or str, as Redis gave it
        extra = {"outcome": handled.outcome, "job_id": handled.job_id}
        if handled.outcome == "invalid":
            log.warning("ingest entry invalid: %s", handled.error, extra=extra)
        else:
            log.info("ingest entry %s", handled.outcome, extra=extra)
        return handled

    def _dead_letter(self, raw: bytes | str, error: str) -> str:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
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
            reason="invalid",
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


def ingest_client(url: str, block: float) -> redis.Redis:
    """A bytes client: a producer's invalid UTF-8 must become a dead letter, not a decode error here."""
    if url.startswith("memory://"):
        from config.redis import connect

        return connect(url)
    return redis.Redis.from_url(
        url,
        socket_timeout=block + 10,
        socket_connect_timeout=3,
        health_check_interval=10,
        retry_on_timeout=True,
    )
