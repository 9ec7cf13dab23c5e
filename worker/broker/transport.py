"""kombu's Redis transport, recording a held transactional job only when it is held for a while.

kombu records every message a consumer takes as unacknowledged (MULTI, ZADD to the index, HSET of the
message, EXEC) and removes the record at the acknowledgement (MULTI, ZREM, HDEL, EXEC): eight Redis
commands per message, more than half of what issue 16 allows a whole transactional message. For most
messages the record is written and removed within milliseconds and never read.

Here a transactional job's message (mail.send, mail.event: the tasks the pending ledger tracks) is held in
the consumer's memory, and its record is written by the consumer's heartbeat (worker/liveness/leases.py,
every `MAILWORKER_WORKER_LEASE` / 5 seconds) only if it is still held then: a slow server, a countdown.
From then on it is the record kombu would have kept (same key, same format): renewed on every beat, handed
back by any consumer when its lease lapses, removed at the acknowledgement. A message acknowledged before
the next beat costs no command at all.

What the in-memory hold changes, and what covers it:
- a worker that dies within a beat of taking a job: the job is not in the unacked hash; its claim (taken
  as the task starts) lapses with the dead holder's heartbeat, and worker/jobs/lost.py publishes the job
  again from the pending ledger, as it does for a message lost between BRPOP and the record;
- a pool process killed (Celery rejects and requeues the message), a warm shutdown or a lost connection
  (kombu hands back what the consumer holds): a held message goes back to its queue from memory, or, while
  Redis is away (a restart, a Sentinel failover), with the first heartbeat that reaches it.
Every other message (Test Connection, bulk, webhooks) is recorded as kombu records it.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.json import dumps

from config.names import EVENT_TASK, SEND_TASK

log = logging.getLogger(__name__)

# Held messages that could not go back to their queue (Redis away), as (list, payload, leftmost): process-wide,
# because the consumer replaces its channel, and with it its QoS, when the connection breaks.
_UNRETURNED: list[tuple[str, str, bool]] = []
_UNRETURNED_LOCK = threading.Lock()

# The tasks whose jobs the pending ledger tracks (tasks/api.py `_publish_tracked`): a job of these lost
# with a worker is published again by worker/jobs/lost.py, so kombu's record may wait for a beat.
LEDGER_TRACKED = frozenset({SEND_TASK, EVENT_TASK})


def held_in_memory(message: Any) -> bool:
    headers = getattr(message, "headers", None) or {}
    return headers.get("task") in LEDGER_TRACKED


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_memory: set[str] = set()  # held, not recorded in Redis (yet)
        # The beat's recording and the event loop's acknowledgement of one message must not interleave:
        # a record written after its message was acknowledged would hand the message out again.
        self.lock = threading.Lock()

    def append(self, message: Any, delivery_tag: str) -> None:
        if held_in_memory(message):
            with self.lock:
                self.in_memory.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def _forget_in_memory(self, delivery_tag: str) -> bool:
        """True when the tag was held in memory and never recorded (nothing in Redis to remove)."""
        if delivery_tag in self.in_memory:
            self.in_memory.discard(delivery_tag)
            return True
        return False

    def ack(self, delivery_tag: str) -> None:
        with self.lock:
            if self._forget_in_memory(delivery_tag):
                virtual.QoS.ack(self, delivery_tag)
                return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with self.lock:
            if self._forget_in_memory(delivery_tag):
                message = self._delivered.get(delivery_tag)
                if requeue and message is not None:
                    self._put_back(message, leftmost=True)
                virtual.QoS.ack(self, delivery_tag)
                return
        super().reject(delivery_tag, requeue)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        with self.lock:
            if self._forget_in_memory(tag):
                message = self._delivered.get(tag)
                if message is not None:
                    self._put_back(message, leftmost=leftmost, client=client)
                return
        super().restore_by_tag(tag, client, leftmost)

    def _put_back(self, message: Any, *, leftmost: bool, client: Any = None) -> None:
        """A message held in memory back to its queue, as kombu restores a recorded one.

        Redis away (a restart, a Sentinel failover: the consumer hands back what it holds as its connection
        breaks) keeps the message in this process, and the next beats put it back (`return_unreturned`).
        """
        payload = copy.deepcopy(message._raw)
        try:
            with self.channel.conn_or_acquire(client) as conn:
                pipe = conn.pipeline()
                delivery = message.delivery_info
                self.channel._do_restore_message(payload, delivery["exchange"], delivery["routing_key"], pipe,
                                                 leftmost)  # fmt: skip
                pipe.execute()
        except self.channel.connection_errors as error:
            # The queue's list as kombu names it (our queues are routed by their own name), the priority lane
            # included: the beat's own connection needs no lookup of bindings.
            queue = self.channel._q_for_pri(
                message.delivery_info["routing_key"],
                self.channel._get_message_priority(payload, reverse=False),
            )
            with _UNRETURNED_LOCK:
                _UNRETURNED.append((queue, dumps(payload), leftmost))
            log.warning(
                "a held message could not go back to %s now (%s): the next beats put it back", queue, error
            )

    def return_unreturned(self, client: Any, prefix: str) -> int:
        """The beat: put back the held messages a broken connection kept in this process; how many."""
        with _UNRETURNED_LOCK:
            waiting = list(_UNRETURNED)
            _UNRETURNED.clear()
        returned = 0
        try:
            for queue, payload, leftmost in waiting:
                (client.lpush if leftmost else client.rpush)(f"{prefix}{queue}", payload)
                returned += 1
        finally:
            with _UNRETURNED_LOCK:
                _UNRETURNED[:0] = waiting[returned:]  # what Redis refused again waits for the next beat
        return returned

    def record_held(self, now: float, client: Any, prefix: str) -> int:
        """The beat: write kombu's record of every message still held in memory; how many were written.

        `client` is the beat's own Redis client (not the event loop's), `prefix` kombu's global key prefix.
        """
        with self.lock:
            held = [(tag, message) for tag in list(self.in_memory)
                    if (message := self._delivered.get(tag)) is not None]  # fmt: skip
            if not held:
                return 0
            pipe = client.pipeline(transaction=False)
            for tag, message in held:
                delivery = message.delivery_info
                record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
                pipe.hset(f"{prefix}{self.unacked_key}", tag, record)
                pipe.zadd(f"{prefix}{self.unacked_index_key}", {tag: now})
            pipe.execute()
            tags = [tag for tag, _ in held]
            self.in_memory.difference_update(tags)  # from now on kombu's own record, removed by kombu's ack
        return len(held)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # kombu's own: ZREM and HDEL (in the caller's transaction when it passes one). Its acknowledgement
        # needs no transaction: a lone index entry is dropped by the next restore, a lone hash entry never
        # happens (HDEL goes first).
        if pipe is not None:
            return super()._remove_from_indices(delivery_tag, pipe)
        with self.channel.conn_or_acquire() as conn:
            pipe = conn.pipeline(transaction=False)
            return pipe.hdel(self.unacked_key, delivery_tag).zrem(self.unacked_index_key, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def register() -> None:
    """Every kombu connection of this process to a Redis broker uses these (a failover's switch too)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["rediss"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
