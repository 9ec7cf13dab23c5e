"""What a running deployment holds: messages per queue (and when the oldest was published), messages held by
workers, dead letters, and each realm's mail of the last hour. For `mailworker stats`, `mailworker health`,
`GET /v1/stats` and `GET /metrics`."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from config.names import PUBLISHED_AT, SEND_TASK
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


def queue_depths(settings: ServiceSettings, *, oldest: bool = False) -> dict[str, Any]:
    """Messages waiting per queue (all priority levels), and those taken by a worker but not acknowledged.

    kombu keeps a queue in Redis lists named `<global_keyprefix><queue>[\\x06\\x16<priority>]`; the channel
    knows the names, so this stays right with a prefix, with priorities and with Sentinel URLs.

    `oldest`: also {"oldest": {queue: when its oldest waiting message was published, or None}}, in the same
    round trip. kombu pushes onto the head of each list and consumers pop from its tail, so the tail of each
    priority list is that list's oldest message: LINDEX reads it without taking it.
    """
    from worker.app import QUEUES

    try:
        with broker_connection(settings) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            channel = conn.default_channel
            # Reads only, outside a transaction: a full Redis (maxmemory reached) refuses MULTI, and the
            # depths are what an operator needs most then.
            pipe = channel.client.pipeline(transaction=False)
            lists = [
                channel._q_for_pri(name, priority) for name in QUEUES for priority in channel.priority_steps
            ]
            for name in lists:
                pipe.llen(name)
                if oldest:  # kombu's client prefixes only the commands kombu uses: LINDEX is not one
                    pipe.lindex(channel.global_keyprefix + name, -1)
            pipe.hlen(channel.unacked_key)
            *found, unacked = pipe.execute()
    except Exception as error:  # kombu wraps every transport and URL error differently
        raise unusable_url("MAILWORKER_BROKER_URL", "the broker", settings.broker_url, error) from None
    per_list = 2 if oldest else 1
    steps = len(lists) // len(QUEUES)
    queues, tails = {}, {}
    for i, name in enumerate(QUEUES):
        mine = found[i * steps * per_list : (i + 1) * steps * per_list]
        queues[name] = sum(int(n) for n in mine[::per_list])
        times = [published_at(raw) for raw in mine[1::per_list]] if oldest else []
        tails[name] = min((t for t in times if t is not None), default=None)
    data: dict[str, Any] = {"queues": queues, "unacked": int(unacked)}
    if oldest:
        data["oldest"] = tails
    return data


def published_at(raw: bytes | str | None) -> float | None:
    """When a message as kombu stores it in Redis was published: the header worker/app.py sets, else (a
    producer of an older version) a mail.send job's `created_at`; None for no message or no time in it."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        if isinstance(headers.get(PUBLISHED_AT), int | float):
            return float(headers[PUBLISHED_AT])
        if headers.get("task") != SEND_TASK or message.get("content-type") != "application/json":
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        created = args[0].get("created_at")
        return float(created) if isinstance(created, int | float) else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # not a message of ours
        return None


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
