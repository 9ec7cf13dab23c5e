"""The Celery app: broker and result backend on Redis, queues, routing and reliability options."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from celery.signals import before_task_publish
from kombu import Queue

from config.names import (
    BULK,
    BULK_CHUNK_TASK,
    BULK_START_TASK,
    CALLBACKS,
    CONTROL,
    EVENT_TASK,
    PUBLISHED_AT,
    QUEUES,
    SEND_TASK,
    TEST_CONNECTION_TASK,
    TRANSACTIONAL,
    WEBHOOK_TASK,
)
from config.redis import REDIS_SCHEMES
from config.sentinel import is_sentinel
from config.settings import ServiceSettings, get_settings
from worker.broker.results import store_result_lean
from worker.broker.transport import register as register_transport
from worker.liveness.leases import Leases

TASK_MODULES = ["tasks.send", "tasks.events", "tasks.connection", "tasks.bulk", "tasks.webhooks"]

ROUTES = {
    SEND_TASK: {"queue": TRANSACTIONAL},
    EVENT_TASK: {"queue": TRANSACTIONAL},
    TEST_CONNECTION_TASK: {"queue": CONTROL},
    BULK_START_TASK: {"queue": BULK},
    BULK_CHUNK_TASK: {"queue": BULK},
    WEBHOOK_TASK: {"queue": CALLBACKS},
}


def celery_config(settings: ServiceSettings) -> dict[str, Any]:
    transport_options: dict[str, Any] = {
        # A message a worker took but did not acknowledge goes back to the queue when its lease lapses:
        # a live worker renews the lease of everything it holds on every heartbeat (worker/liveness/leases.py), so
        # this is how long a dead worker's messages wait, not a bound on how long a task or a retry's
        # countdown may take.
        "visibility_timeout": settings.worker_lease,
        # How often a consumer looks for lapsed leases (kombu's default is every 100 s).
        "unacked_restore_interval": max(1, settings.worker_lease // 5),
        "unacked_restore_throttle": 1,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    result_options: dict[str, Any] = {"retry_policy": {"timeout": 5.0}}
    # Sentinel (config/sentinel.py): the master's name, and the sentinels' password, beside the URL list.
    # kombu's and Celery's pools ask the sentinels for the master on every new connection: after a
    # failover the reconnect below (and the result backend's retries) land on the promoted replica.
    if is_sentinel(settings.broker_url):
        transport_options.update(settings.sentinel.transport_options())
    if is_sentinel(settings.result_backend):
        result_options.update(settings.sentinel.transport_options())
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": result_options,
        # A result written while Redis restarts is retried (backoff up to 10 s, for about two minutes)
        # instead of dropped: the job was delivered, and `status` and waiting producers must learn so.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # JSON only: no pickle, so a message cannot run code, and producers in any language can read it.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A job is acknowledged after it ran; a worker that dies mid-job leaves it for another worker.
        # The delivered-marker (tasks/delivery.py) keeps such a redelivery from sending twice.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "result_expires": settings.result_expires,
        # Not extended: an extended result repeats the task's arguments (the job's context: reset links and
        # personal data) for a day. Results carry what `status` needs themselves.
        "result_extended": False,
        # No STARTED result: its write cost five Redis commands per message (GET, MULTI, SETEX, PUBLISH,
        # EXEC). `status` says STARTED from the job's claim instead, which a running job holds anyway.
        "task_track_started": False,
        # Task events only on request (MAILWORKER_TASK_EVENTS, or Flower's `enable_events`): each costs
        # a Redis PUBLISH, four per message, and nobody reads them unless a monitor runs.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        # One message at a time per process: a password reset must not sit in a prefetch buffer
        # behind a hundred others.
        "worker_prefetch_multiplier": 1,
        # ... and none taken before a process is free to run it: a reset that arrives later in a higher
        # priority lane (worker/jobs/lanes.py) is the next one taken, not the one after a prefetched batch.
        # (Celery implements it for Redis only, and warns on any other broker: the demo's in-memory one.)
        "worker_disable_prefetch": settings.broker_url.startswith(REDIS_SCHEMES),
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": TRANSACTIONAL,
        "task_routes": ROUTES,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_time_limit - 30,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


def _reconnect_instead_of_crashing() -> None:
    """Keep a worker alive through a Redis restart (celery 5.7 / kombu 5.7).

    When the broker goes away, the consumer closes its broken connection; closing the default channel tries
    to hand back unacknowledged messages through a transport already detached from its connection
    (`transport.client is None`) and raises AttributeError: "Unrecoverable error", the worker exits. Raise
    the connection error it really is instead: the close ignores it, the worker reconnects, and the
    messages it held come back from the unacked index after the visibility timeout.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    original = kombu_redis.Channel._connparams
    if getattr(original, "detached_guard", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return original(self, asynchronous)

    _connparams.detached_guard = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


# Celery messages carry no timestamp of their own: every publish (a retry's copy is a new message) gets one,
# from which /metrics reads the age of each queue's oldest waiting message (tasks/stats.py).
def _stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[PUBLISHED_AT] = round(time.time(), 3)


class _App(Celery):
    """Celery, with a Redis result backend that subscribes to a job's result only when someone waits.

    Celery's Redis backend SUBSCRIBEs to every task's result channel as it is published (and UNSUBSCRIBEs
    when it arrives): two Redis commands per message, for a producer that almost never waits (the HTTP
    API returns the job id). Waiting (`wait_for_result`, `AsyncResult.get`) subscribes then, and reads the
    stored result right after subscribing (`ResultConsumer.on_wait_for_pending`), so a result that came
    first is not missed.
    """

    def _get_backend(self) -> Any:
        backend = super()._get_backend()
        if isinstance(backend, RedisBackend):  # Sentinel's too; other backends' calls do other things
            backend.on_task_call = _subscribe_when_waited
            store_result_lean(backend)  # worker/broker/results.py
        return backend


def _subscribe_when_waited(producer: Any, task_id: str) -> None:
    """RedisBackend.on_task_call without the subscription (see _App)."""


def create_app(settings: ServiceSettings | None = None) -> Celery:
    _reconnect_instead_of_crashing()
    register_transport()  # worker/broker/transport.py
    # Every process that publishes (producers, workers retrying, the sweeper) builds its app here.
    before_task_publish.connect(_stamp_published_at, weak=False, dispatch_uid=PUBLISHED_AT)
    settings = settings or get_settings()
    celery = _App("iam-mail-worker", include=TASK_MODULES)
    celery.conf.update(celery_config(settings))
    celery.mailworker_settings = settings
    celery.steps["consumer"].add(Leases)  # on any broker: the registry of live workers comes with it
    return celery


app = create_app()
