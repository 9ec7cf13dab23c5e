"""The consumer's side of liveness (worker/liveness/heartbeat.py), as a Celery consumer bootstep.

kombu's Redis transport keeps every message a consumer took in an "unacked" hash, indexed by the time it
was taken, and hands a message back to the queue once that time is older than its visibility timeout. This
step turns the timeout into a lease: while the worker lives, a thread writes the record of the
transactional jobs the consumer holds in memory (worker/broker/transport.py) and renews the index entry of every
message its consumer holds (running, waiting for a pool process, or waiting for a retry's countdown), so
the timeout can be short (`MAILWORKER_WORKER_LEASE`, 15 s) without a long task or a long countdown ever
being handed to a second worker. When the worker dies, its renewals stop and every other worker's
consumer hands its messages back within one lease plus one restore interval.

The same thread registers the consumer and its queues in the registry, so `health`, `wait_for_result` and
`settings test` can tell at once when nobody serves a queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from config.keys import Keys
from config.redis import REDIS_SCHEMES, connect
from config.settings import ServiceSettings
from worker.liveness.heartbeat import LiveWorkers, process_name

log = logging.getLogger(__name__)


def consumer_qos(consumer: Any) -> Any:
    """The QoS of the consumer's channel: what it holds (kombu), and what it holds in memory
    (worker/broker/transport.py)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    channel = getattr(task_consumer, "channel", None)
    return getattr(channel, "qos", None)


def held_delivery_tags(consumer: Any) -> list[str]:
    """Delivery tags of the messages this consumer took and has not acknowledged yet."""
    delivered = getattr(consumer_qos(consumer), "_delivered", None)
    if not delivered:
        return []
    for _ in range(3):
        try:
            return [str(tag) for tag in list(delivered)]
        except RuntimeError:  # changed size while copying (the event loop acked one): copy again
            continue
    return []


class LeaseRenewer:
    """Renews the leases of held messages and the consumer's registry entry, every beat."""

    def __init__(self, settings: ServiceSettings, consumer: Any) -> None:
        self.settings = settings
        self.consumer = consumer
        self.node = f"{getattr(consumer, 'hostname', 'worker')}:{process_name()}"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        keys = Keys(settings.key_prefix)
        self._store = connect(settings.store_url, check=False, sentinel=settings.sentinel)
        self.registry = LiveWorkers(self._store, keys, settings.worker_lease)
        # Leases exist only on kombu's Redis transport; on another broker (the demo's in-memory one) the
        # registry is still kept: whoever waits on a worker must find this one.
        self._broker = (
            connect(
                settings.broker_url, variable="MAILWORKER_BROKER_URL", check=False, sentinel=settings.sentinel
            )
            if settings.broker_url.startswith(REDIS_SCHEMES)
            else None
        )
        # kombu prefixes its own keys with the global key prefix (tests, shared Redis servers).
        self.broker_prefix = settings.broker_key_prefix
        self.unacked_index = f"{settings.broker_key_prefix}unacked_index"

    def queues(self) -> list[str]:
        try:
            return sorted(q.name for q in self.consumer.app.amqp.queues.consume_from.values())
        except AttributeError:
            return []

    def renew(self, now: float | None = None) -> int:
        """One beat: the registry entry, then the leases; returns how many leases were renewed."""
        now = time.time() if now is None else now
        self.registry.register(self.node, self.queues(), self.started, now)
        qos = consumer_qos(self.consumer)
        if self._broker is not None and hasattr(qos, "record_held"):
            # Held messages a broken connection could not put back go back now (worker/broker/transport.py);
            # transactional jobs held since the last beat get the record kombu would have written at once.
            qos.return_unreturned(self._broker, self.broker_prefix)
            qos.record_held(now, self._broker, self.broker_prefix)
        tags = held_delivery_tags(self.consumer) if self._broker is not None else []
        if tags and self._broker is not None:
            # XX: only messages still unacknowledged; one acked meanwhile must not come back.
            self._broker.zadd(self.unacked_index, dict.fromkeys(tags, now), xx=True)
        return len(tags)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mailworker-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.registry.unregister(self.node)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.renew()
            except redis.RedisError as error:
                log.warning("renewing leases failed (Redis unavailable?): %s", error)
            except Exception:  # a bug here must not end the renewals: log it, beat again
                log.exception("renewing leases failed")
            self._stop.wait(self.settings.heartbeat_interval)


class Leases(bootsteps.StartStopStep):
    """Consumer bootstep: starts the LeaseRenewer with the consumer, stops it at shutdown."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.renewer: LeaseRenewer | None = None

    def start(self, c: Any) -> None:
        if self.renewer is None:
            self.renewer = LeaseRenewer(c.app.mailworker_settings, c)
            self.renewer.start()

    def shutdown(self, c: Any) -> None:
        if self.renewer is not None:
            self.renewer.stop()
            self.renewer = None
