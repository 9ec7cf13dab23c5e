"""`mailworker status|stats|health`: what an operator (or a container probe) asks a running deployment.

Read-only. Nothing here prints a task's arguments (the job's context holds personal data) or a secret.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from worker.cli.common import print_json, table

if TYPE_CHECKING:
    from config.settings import ServiceSettings

# Counters every realm row shows, even at zero (worker/stats.py names; more appear when counted).
REALM_COLUMNS = ("sent", "dead", "dropped_cooldown")


def register(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="one job: state, result, attempts, last error")
    status.add_argument("task_id", help="the job id (= Celery task id) a producer got back")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=show_status)

    stats = subparsers.add_parser("stats", help="queue depths, dead letters, last hour's mail per realm")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=show_stats)

    health = subparsers.add_parser(
        "health", help="probe: exit 0 when Redis (store, broker) and a worker answer, else 1"
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per check (default 2)")
    health.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="only these workers count, e.g. transactional@$HOSTNAME (repeatable; default: any worker)",
    )
    health.set_defaults(handler=run_health)


# ---- status -------------------------------------------------------------------------------------------


def job_status(task_id: str) -> dict[str, Any]:
    """What Celery's result backend, the delivery ledger and the dead-letter store know about one job."""
    from celery.result import AsyncResult

    from config.errors import NotFound
    from worker.app import app
    from worker.ledger import DeliveryLedger
    from worker.runtime import runtime

    rt = runtime()
    # Read-only bookkeeping, built without `rt.services`: status must not need MAILWORKER_SECRET_KEY.
    ledger = DeliveryLedger(rt.redis, rt.keys, rt.settings.delivered_marker_ttl)
    result = AsyncResult(task_id, app=app)
    state = result.state
    value = result.result
    info: dict[str, Any] = {"job_id": task_id, "state": state, "attempts": ledger.attempts(task_id)}
    if isinstance(value, dict):
        for name in ("status", "reason", "smtp_code", "message_id", "error", "sent_at"):
            if value.get(name) is not None:
                info[name] = value[name]
        info["attempts"] = max(info["attempts"], int(value.get("attempts") or 0))
    elif isinstance(value, BaseException):
        # FAILURE: the exception (a bug); RETRY: Celery's Retry ("Retry in 5s"); the SMTP error of the
        # failed attempt is the ledger's last_error (below).
        info["error" if state == "FAILURE" else "retry"] = f"{type(value).__name__}: {value}"
    last_error = ledger.last_error(task_id)
    if last_error is not None and state == "RETRY":
        info["last_error"] = last_error
    try:
        letter = rt.dead_letters.get(task_id)
    except NotFound:
        letter = None
    if letter is not None:
        info.setdefault("status", "dead-lettered")
        info.update(reason=letter.reason, error=letter.error, task=letter.task, realm=letter.realm)
        info["attempts"] = max(info["attempts"], letter.attempts)
        info["died_at"] = letter.died_at
    delivered = ledger.delivered(task_id)
    if delivered is not None and "status" not in info:
        info.update(status="sent", message_id=delivered.get("message_id"), sent_at=delivered.get("sent_at"))
    if state == "PENDING" and "status" not in info:
        info["status"] = "pending (waiting in a queue, or no such job)"
    for name in ("name", "worker", "queue", "date_done"):
        extended = getattr(result, name, None)
        if extended is not None:
            info["task" if name == "name" else name] = extended
    info.setdefault("status", state.lower())
    return info


def show_status(args: argparse.Namespace) -> int:
    info = job_status(args.task_id)
    if args.json:
        print_json(info)
        return 0
    order = ("job_id", "state", "status", "task", "realm", "attempts", "reason", "error", "retry", "last_error", "smtp_code",
             "message_id", "sent_at", "died_at", "worker", "queue", "date_done")  # fmt: skip
    for name in order:
        if name in info:
            print(f"{name:11} {_shown(name, info[name])}")
    return 0


def _shown(name: str, value: Any) -> str:
    if name in ("sent_at", "died_at") and isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


# ---- stats --------------------------------------------------------------------------------------------


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

    with broker_connection(settings) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        channel = conn.default_channel
        queues = {name: int(channel._size(name)) for name in QUEUES}
        unacked = int(channel.client.hlen(channel.unacked_key))
    return {"queues": queues, "unacked": unacked}


def collect_stats(settings: ServiceSettings | None = None, now: float | None = None) -> dict[str, Any]:
    from worker.runtime import runtime
    from worker.stats import Stats

    rt = runtime()
    data = queue_depths(settings or rt.settings)
    data["dead_letters"] = rt.dead_letters.count()
    stats = Stats(rt.redis, rt.keys)  # not rt.services: stats must not need MAILWORKER_SECRET_KEY
    realms: dict[str, dict[str, int]] = {}
    for realm in stats.realms():
        counts = stats.last_hour(realm, now=now)
        if any(counts.values()):
            realms[realm] = {**dict.fromkeys(REALM_COLUMNS, 0), **counts}
    data["last_hour"] = realms
    return data


def show_stats(args: argparse.Namespace) -> int:
    data = collect_stats()
    if args.json:
        print_json(data)
        return 0
    print(table([[name, str(depth)] for name, depth in data["queues"].items()], ["QUEUE", "WAITING"]))
    print(f"unacked: {data['unacked']} (taken by a worker, not yet acknowledged)")
    print(f"dead letters: {data['dead_letters']} (see `mailworker dead list`)")
    realms = data["last_hour"]
    if not realms:
        print("last hour: no mail")
        return 0
    columns = list(REALM_COLUMNS) + sorted(
        {c for counts in realms.values() for c in counts} - set(REALM_COLUMNS)
    )
    rows = [[realm, *(str(counts.get(c, 0)) for c in columns)] for realm, counts in realms.items()]
    print("last hour:")
    print(table(rows, ["REALM", *(c.upper() for c in columns)]))
    return 0


# ---- health -------------------------------------------------------------------------------------------


def check_health(timeout: float, nodes: Sequence[str] = ()) -> list[tuple[bool, str]]:
    """(ok, line) for the store's Redis, the broker and the workers; the worker check needs the broker."""
    import redis

    from config.redis import connect, redact_url
    from worker.runtime import runtime

    settings = runtime().settings
    checks: list[tuple[bool, str]] = []
    started = time.monotonic()
    try:
        client = connect(settings.store_url, check=False)
        client.connection_pool.connection_kwargs.update(
            socket_timeout=timeout, socket_connect_timeout=timeout
        )
        client.ping()
        checks.append((True, f"store   {redact_url(settings.store_url)} answers ({_ms(started)})"))
    except (redis.RedisError, OSError) as error:
        checks.append(
            (False, f"store   {redact_url(settings.store_url)}: {error} (check MAILWORKER_STORE_URL)")
        )

    started = time.monotonic()
    try:
        with broker_connection(settings, timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            conn.default_channel.client.ping()
        checks.append((True, f"broker  {redact_url(settings.broker_url)} answers ({_ms(started)})"))
    except Exception as error:  # kombu wraps every transport error differently
        checks.append(
            (False, f"broker  {redact_url(settings.broker_url)}: {error} (check MAILWORKER_BROKER_URL)")
        )
        checks.append((False, "workers not asked: the broker does not answer"))
        return checks

    from worker.app import app

    started = time.monotonic()
    # Named nodes: done as soon as they all answered. Any worker: collect replies for the whole timeout.
    replies = app.control.ping(timeout=timeout, destination=list(nodes) or None, limit=len(nodes) or None)
    names = sorted(name for reply in replies for name in reply)
    if names:
        checks.append((True, f"workers {', '.join(names)} answered ({_ms(started)})"))
    else:
        wanted = ", ".join(nodes) if nodes else "any worker"
        checks.append(
            (
                False,
                f"workers: {wanted} did not answer a ping within {timeout:g}s (is `mailworker worker` running?)",
            )
        )
    return checks


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def run_health(args: argparse.Namespace) -> int:
    checks = check_health(args.timeout, args.node)
    for ok, line in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for ok, _ in checks) else 1
