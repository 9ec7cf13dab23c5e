"""What a running deployment holds: messages per queue, messages held by workers, dead letters, and each
realm's mail of the last hour. For `mailworker stats`, `mailworker health` and `GET /v1/stats`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config.redis import unusable_url

if TYPE_CHECKING:
    from config.settings import ServiceSettings

# Counters every realm row shows, even at zero (worker/jobs/stats.py names; more appear when counted).
REALM_COLUMNS = ("sent", "dead", "dropped_cooldown")


def broker_connection(settings: ServiceSettings, timeout: float = 5.0) -> Any:
    """A kombu connection to the broker with the worker's transport options (global key prefix included)."""
    from kombu import Connection

    from worker.app import celery_config

    options = dict(celery_config(settings)["broker_transport_options"])
    options.update(socket_connect_timeout=timeout, socket_timeout=timeout, max_retries=1)
    return Connection(settings.broker_url, transport_options=options, connect_timeout=timeout)


def queue_depths(settings: ServiceSettings) -> dict[str, Any]:
    """Messages waiting per queue (all priority levels), and those taken by a worker but not acknowledged.

    kombu keeps a queue in Redis lists named `<global_keyprefix><queue>[\\x06\\x16<priority>]`; the channel
    knows the names, so this stays right with a prefix, with priorities and with Sentinel URLs.
    """
    from worker.app import QUEUES

    try:
        with broker_connection(settings) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            channel = conn.default_channel
            # Reads only, outside a transaction: a full Redis (maxmemory reached) refuses MULTI, and the
            # depths are what an operator needs most then.
            pipe = channel.client.pipeline(transaction=False)
            for name in QUEUES:
                for priority in channel.priority_steps:
                    pipe.llen(channel._q_for_pri(name, priority))
            pipe.hlen(channel.unacked_key)
            *lengths, unacked = (int(n) for n in pipe.execute())
            steps = len(channel.priority_steps)
            queues = {name: sum(lengths[i * steps : (i + 1) * steps]) for i, name in enumerate(QUEUES)}
    except Exception as error:  # kombu wraps every transport and URL error differently
        raise unusable_url("MAILWORKER_BROKER_URL", "the broker", settings.broker_url, error) from None
    return {"queues": queues, "unacked": unacked}


def collect_stats(settings: ServiceSettings | None = None, now: float | None = None) -> dict[str, Any]:
    from worker.runtime import runtime

    rt = runtime()
    data = queue_depths(settings or rt.settings)
    data["dead_letters"] = rt.dead_letters.count()
    stats = rt.stats  # not rt.services: stats must not need MAILWORKER_SECRET_KEY
    realms: dict[str, dict[str, int]] = {}
    for realm in stats.realms():
        counts = stats.last_hour(realm, now=now)
        if any(counts.values()):
            realms[realm] = {**dict.fromkeys(REALM_COLUMNS, 0), **counts}
    data["last_hour"] = realms
    return data


def realm_hours(realm: str, hours: int = 24, now: float | None = None) -> list[dict[str, Any]]:
    """One realm's counts per clock hour, oldest first: {"hour": ISO start of the hour, "sent": n, ...};
    every hour is there, at zero when nothing happened (a chart's x axis)."""
    from tasks.views import iso
    from worker.runtime import runtime

    return [{"hour": iso(hour * 3600), **dict.fromkeys(REALM_COLUMNS, 0), **counts}
            for hour, counts in runtime().stats.hourly(realm, hours, now=now)]  # fmt: skip
