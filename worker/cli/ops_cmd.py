"""`mailworker status|stats`: what an operator asks a running deployment (health: health_cmd.py).

Read-only. Nothing here prints a task's arguments (the job's context holds personal data) or a secret:
a URL's credentials are masked (config/redis.py), in the errors of the libraries that read it too.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from config.errors import ConfigError
from config.redis import redact_url, redact_urls_in
from worker.cli.common import print_json, shown, table
from worker.cli.formats import FAILED, NOT_ENDED, NOT_FOUND, OK, iso, with_iso_times

if TYPE_CHECKING:
    from config.settings import ServiceSettings

# The Unix times of `status`, printed as ISO 8601 UTC (worker/cli/formats.py).
STATUS_TIMES = ("sent_at", "died_at", "date_done")

# Counters every realm row shows, even at zero (worker/jobs/stats.py names; more appear when counted).
REALM_COLUMNS = ("sent", "dead", "dropped_cooldown")


def register(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="one job: state, result, attempts, last error")
    status.add_argument("task_id", help="the job id (= Celery task id) a producer got back")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=show_status)

    stats = subparsers.add_parser("stats", help="queue depths, dead letters, last hour's mail per realm")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=show_stats)


# ---- status -------------------------------------------------------------------------------------------


def job_status(task_id: str) -> dict[str, Any]:
    """What Celery's result backend, the delivery ledger and the dead-letter store know about one job."""
    from celery.result import AsyncResult

    from config.errors import NotFound
    from tasks.outcomes import dead_letter_result
    from worker.app import app
    from worker.runtime import runtime

    rt = runtime()
    # Read-only bookkeeping, without `rt.services`: status must not need MAILWORKER_SECRET_KEY.
    ledger = rt.ledger
    try:
        result = AsyncResult(task_id, app=app)
        state = result.state
        value = dead_letter_result(result.result) or result.result  # FAILURE: DeadLettered carries it
    except Exception as error:  # a backend Celery cannot load or reach: each raises its own kind
        url = rt.settings.result_backend
        raise unusable("MAILWORKER_RESULT_BACKEND", "the result backend", url, error) from None
    facts = ledger.fields(task_id)
    info: dict[str, Any] = {"job_id": task_id, "state": state, "attempts": int(facts.get("attempts") or 0)}
    if facts.get("ambiguous"):
        info["ambiguous"] = int(facts["ambiguous"])
    if isinstance(value, dict):
        for name in ("status", "reason", "smtp_code", "message_id", "error", "sent_at", "ambiguous",
                     "maybe_delivered", "queue", "task"):  # fmt: skip
            if value.get(name) is not None:
                info[name] = value[name]
        info["attempts"] = max(info["attempts"], int(value.get("attempts") or 0))
    elif isinstance(value, BaseException):
        # FAILURE: the exception (a bug); RETRY: Celery's Retry ("Retry in 5s"); the SMTP error of the
        # failed attempt is the ledger's last_error (below).
        info["error" if state == "FAILURE" else "retry"] = f"{type(value).__name__}: {value}"
    last_error = facts.get("last_error")
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
        # Celery says PENDING for a job it never heard of too: the pending ledger knows the queued ones.
        if facts or rt.redis.exists(rt.keys.pending_job(task_id)):
            info["status"] = "queued"
        else:
            info["known"] = False
            wiped = " (or lost when the store was wiped)" if rt.store.wipe() is not None else ""
            info["status"] = f"unknown: no such job, or its records expired{wiped}"
    for name in ("name", "worker", "queue", "date_done"):
        extended = getattr(result, name, None)
        if isinstance(extended, dt.datetime):  # date_done: Celery's UTC datetime, a Unix time here
            extended = (extended if extended.tzinfo else extended.replace(tzinfo=dt.UTC)).timestamp()
        if extended is not None:
            info["task" if name == "name" else name] = extended
    info.setdefault("status", state.lower())
    return info


DELIVERED = ("sent", "duplicate-skipped", "ignored")  # ignored: an event the realm does not notify
NOT_DELIVERED = ("dead-lettered", "dropped", "rejected", "failure")


def status_exit(info: dict[str, Any]) -> int:
    """The exit code of `mailworker status` (worker/cli/formats.py): 0 delivered, 1 ended without, 3 no
    such job, 4 not ended yet."""
    status = str(info.get("status", ""))
    if status in DELIVERED:
        return OK
    if status in NOT_DELIVERED:
        return FAILED
    if info.get("known") is False:
        return NOT_FOUND
    return NOT_ENDED


def show_status(args: argparse.Namespace) -> int:
    info = job_status(args.task_id)
    code = status_exit(info)
    info.pop("known", None)
    if args.json:
        print_json(with_iso_times(info, STATUS_TIMES))
        return code
    order = ("job_id", "state", "status", "task", "realm", "attempts", "ambiguous", "maybe_delivered", "reason",
             "error", "retry", "last_error", "smtp_code", "message_id", "sent_at", "died_at", "worker", "queue",
             "date_done")  # fmt: skip
    for name in order:
        if name in info:
            print(f"{name:11} {_shown(name, info[name])}")
    return code


def _shown(name: str, value: Any) -> str:
    if name in STATUS_TIMES and isinstance(value, int | float):
        return str(iso(value))
    return shown(value)


def unusable(variable: str, what: str, url: str, error: BaseException) -> ConfigError:
    """One line naming the variable to check, the URL and the library's error without credentials."""
    reason = redact_urls_in(f"{type(error).__name__}: {error}", url)
    return ConfigError(f"{variable}: {what} at {redact_url(url)} failed ({reason})")


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
        raise unusable("MAILWORKER_BROKER_URL", "the broker", settings.broker_url, error) from None
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
