"""Per-process resources of a worker or a producer, built once from the service settings.

Celery forks worker processes: sockets must not be shared across a fork, so `reset()` runs in every new
child (tasks/signals.py connects it to `worker_process_init`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from config.crypto import SecretBox
from config.keys import Keys
from config.redis import connect
from config.settings import ServiceSettings, get_settings

if TYPE_CHECKING:
    from config.recent import Recent
    from config.store import SettingsStore
    from worker.bounces.record import BounceRecorder
    from worker.bounces.suppression import SuppressionList
    from worker.bulk.progress import BulkJobs
    from worker.content.render import TemplateRenderer
    from worker.delivery.breaker import CircuitBreaker
    from worker.delivery.deliver import Services
    from worker.delivery.iam_users import UserDirectory
    from worker.delivery.oauth import TokenProvider
    from worker.delivery.ratelimit import RateLimiter
    from worker.delivery.webhooks import WebhookDelivery
    from worker.jobs.deadletters import DeadLetterStore
    from worker.jobs.ledger import DeliveryLedger
    from worker.jobs.lost import LostMessages
    from worker.jobs.pending import PendingJobs
    from worker.jobs.stats import Stats
    from worker.liveness.heartbeat import Claims, Heartbeat, LiveWorkers
    from worker.outcomes.buffer import CounterBuffer
    from worker.outcomes.record import Outcomes
    from worker.outcomes.tallies import Tallies
    from worker.outcomes.webhooks.endpoints import EndpointStore


@dataclass
class Runtime:
    settings: ServiceSettings

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings.store_url, sentinel=self.settings.sentinel)

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.secret_keys())

    @cached_property
    def store(self) -> SettingsStore:
        from config.store import SettingsStore

        return SettingsStore(
            self.redis, self.keys, lambda: self.box, allow_private_urls=self.settings.allow_private_urls
        )

    @cached_property
    def renderer(self) -> TemplateRenderer:
        from worker.content.render import TemplateRenderer

        return TemplateRenderer(self.settings.realm_templates_dir)

    @cached_property
    def dead_letters(self) -> DeadLetterStore:
        from worker.jobs.deadletters import DeadLetterStore

        return DeadLetterStore(self.redis, self.keys, self.settings.dead_letter_ttl)

    @cached_property
    def oauth(self) -> TokenProvider:
        from worker.delivery.oauth import TokenProvider

        return TokenProvider(self.redis, self.keys, self.box, allow_private=self.settings.allow_private_urls)

    @cached_property
    def users(self) -> UserDirectory:
        """Users looked up in the IAM's admin API, for events that name a user only by id."""
        from worker.delivery.iam_users import UserDirectory

        return UserDirectory(self.oauth)

    @cached_property
    def ledger(self) -> DeliveryLedger:
        """Per-job bookkeeping; needs no secret key (producers and `status` read it too)."""
        from worker.jobs.ledger import DeliveryLedger

        return DeliveryLedger(self.redis, self.keys, ttl=max(self.settings.result_expires,
                              self.settings.retry_max_age), idempotent_ttl=self.settings.delivered_marker_ttl,
                              ended_ttl=2 * self.settings.lost_job_grace)  # fmt: skip

    @cached_property
    def limiter(self) -> RateLimiter:
        """The realms' provider limits, shared by every worker (worker/delivery/ratelimit.py)."""
        from worker.delivery.ratelimit import RateLimiter

        return RateLimiter(self.redis, self.keys)

    @cached_property
    def stats(self) -> Stats:
        """Per-realm counters; need no secret key (`stats`, the ingest consumer)."""
        from worker.jobs.stats import Stats

        return Stats(self.redis, self.keys)

    @cached_property
    def outcomes(self) -> Outcomes:
        """What became of each job, recorded where it ends, and the webhooks it calls for; needs no secret
        key (the worker that delivers a webhook opens its endpoint's secret)."""
        from worker.outcomes.record import Outcomes
        from worker.outcomes.webhooks.endpoints import EndpointCache
        from worker.outcomes.webhooks.fanout import Fanout

        return Outcomes(self.redis, self.keys, self.stats, self.counters,
                        notify=Fanout(EndpointCache(self.webhooks), publish_webhook))  # fmt: skip

    @cached_property
    def recent_realms(self) -> Recent[str, dict[str, Any] | None]:
        """A producer's realm check (its saved fields), trusted for a moment (config/recent.py)."""
        from config.recent import Recent

        return Recent(self.settings.realm_cache_seconds)

    @cached_property
    def counters(self) -> CounterBuffer:
        """The counters of outcomes and deliveries, summed in this process and written once a second."""
        from worker.outcomes.buffer import CounterBuffer

        return CounterBuffer(self.redis, self.settings.counter_flush_interval)

    @cached_property
    def webhook_delivery(self) -> WebhookDelivery:
        from worker.delivery.webhooks import WebhookDelivery

        return WebhookDelivery(self.redis, self.keys, self.webhooks, self.dead_letters)

    @cached_property
    def webhooks(self) -> EndpointStore:
        """The realms' webhook endpoints; adding one and signing need the secret key, listing does not."""
        from worker.outcomes.webhooks.endpoints import EndpointStore

        return EndpointStore(
            self.redis, self.keys, lambda: self.box, allow_private=self.settings.allow_private_urls
        )

    @cached_property
    def suppressions(self) -> SuppressionList:
        """The realms' suppression lists (worker/bounces/suppression.py); need no secret key."""
        from worker.bounces.suppression import SuppressionList

        return SuppressionList(self.redis, self.keys, recent_seconds=self.settings.realm_cache_seconds)

    @cached_property
    def bounces(self) -> BounceRecorder:
        """Bounces and complaints mapped to their jobs (`mailworker bounces`); VERP needs the secret key."""
        from worker.bounces.record import BounceRecorder
        from worker.bounces.verp import MAC_PURPOSE, VerpMap

        verp = VerpMap(self.redis, self.keys, self.box.mac_keys(MAC_PURPOSE))
        return BounceRecorder(self.redis, self.keys, verp, self.suppressions, self.outcomes)

    @cached_property
    def tallies(self) -> Tallies:
        """The metrics' counters beside the outcomes (retries, SMTP errors, delivery times)."""
        from worker.outcomes.tallies import Tallies

        return Tallies(self.redis, self.keys)

    @cached_property
    def bulk_jobs(self) -> BulkJobs:
        """Bulk jobs in Redis; kept as long as an idempotency key (a job outlives its run by days)."""
        from worker.bulk.progress import BulkJobs, finished_outcome

        return BulkJobs(self.redis, self.keys, self.settings.delivered_marker_ttl,
                        on_finished=lambda progress: self.outcomes.record(finished_outcome(progress)))  # fmt: skip

    @cached_property
    def heartbeat(self) -> Heartbeat:
        from worker.liveness.heartbeat import Heartbeat

        return Heartbeat(self.redis, self.keys, self.settings.worker_lease)

    @cached_property
    def claims(self) -> Claims:
        from worker.liveness.heartbeat import Claims

        # The claim's own expiry only backs up the heartbeat: a task never runs longer than its time limit.
        return Claims(self.redis, self.keys, self.heartbeat, ttl=self.settings.task_time_limit + 60)

    @cached_property
    def live_workers(self) -> LiveWorkers:
        from worker.liveness.heartbeat import LiveWorkers

        return LiveWorkers(self.redis, self.keys, self.settings.worker_lease)

    @cached_property
    def services(self) -> Services:
        from config.keys import SECONDARY
        from worker.delivery.deliver import Services, ThreadPools
        from worker.delivery.settings_cache import SettingsCache
        from worker.policy import RetryPolicy

        return Services(
            settings=self.settings,
            cache=SettingsCache(self.store, self.settings.realm_cache_seconds),
            secondary=SettingsCache(self.store.for_server(SECONDARY), self.settings.realm_cache_seconds),
            renderer=self.renderer,
            pools=ThreadPools(),
            ledger=self.ledger,
            dead=self.dead_letters,
            stats=self.stats,
            outcomes=self.outcomes,
            oauth=self.oauth,
            verp=self.bounces.verp,
            suppressions=self.suppressions,
            tallies=self.tallies,
            policy=RetryPolicy(
                max_attempts=self.settings.max_attempts,
                base_delay=self.settings.retry_base_delay,
                max_delay=self.settings.retry_max_delay,
                max_age=self.settings.retry_max_age,
            ),
        )

    @cached_property
    def breaker(self) -> CircuitBreaker:
        from worker.delivery.breaker import CircuitBreaker

        return CircuitBreaker(
            self.redis,
            self.keys,
            threshold=self.settings.breaker_threshold,
            window=self.settings.breaker_window,
            cooloff=self.settings.breaker_cooloff,
            max_cooloff=self.settings.breaker_max_cooloff,
            recent_seconds=self.settings.realm_cache_seconds,
        )

    @cached_property
    def pending(self) -> PendingJobs:
        from worker.jobs.pending import PendingJobs

        return PendingJobs(
            self.redis, self.keys, grace=self.settings.lost_job_grace, keep=self.settings.delivered_marker_ttl
        )

    @cached_property
    def lost_messages(self) -> LostMessages | None:
        """The check for messages a consumer popped and never recorded; None on a broker that is not Redis."""
        from config.redis import REDIS_SCHEMES
        from worker.jobs.lost import LostMessages

        if not self.settings.broker_url.startswith(REDIS_SCHEMES):
            return None
        broker = connect(self.settings.broker_url, variable="MAILWORKER_BROKER_URL", check=False,
                         sentinel=self.settings.sentinel)  # fmt: skip
        return LostMessages(self.pending, broker, broker_prefix=self.settings.broker_key_prefix,
                            interval=self.settings.heartbeat_interval)  # fmt: skip

    def close(self) -> None:
        if "heartbeat" in self.__dict__:
            self.heartbeat.stop()
        if "counters" in self.__dict__:
            self.counters.close()
        if "services" in self.__dict__:
            self.services.pools.close_all()
        if (lost := self.__dict__.get("lost_messages")) is not None:
            lost.broker.close()
        if "redis" in self.__dict__:
            self.redis.close()


def publish_webhook(endpoint_id: str, webhook_id: str, payload: dict[str, Any]) -> None:
    """Queue one webhook delivery (tasks/webhooks.py) on its own queue: no secret in the message."""
    from config.names import CALLBACKS, WEBHOOK_TASK
    from worker.app import app

    app.send_task(WEBHOOK_TASK, kwargs={"endpoint_id": endpoint_id, "webhook_id": webhook_id,
                                        "payload": payload}, queue=CALLBACKS)  # fmt: skip


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def reset(settings: ServiceSettings | None = None) -> Runtime:
    """Drop every connection and cache (in a freshly forked worker, or when a test changes settings)."""
    global _runtime
    if _runtime is not None:
        _runtime.close()
    _runtime = Runtime(settings or get_settings())
    return _runtime
