"""`mailworker status|stats`: what an operator asks a running deployment (health: health_cmd.py).

Read-only. Nothing here prints a task's arguments (the job's context holds personal data) or a secret:
a URL's credentials are masked (config/redis.py), in the errors of the libraries that read it too.
"""

from __future__ import annotations

import argparse
from typing import Any

from tasks.stats import REALM_COLUMNS, collect_stats
from tasks.status import DELIVERED, NOT_DELIVERED, job_status
from tasks.views import STATUS_TIMES, status_json
from worker.cli.common import print_json, shown, table
from worker.cli.formats import FAILED, NOT_ENDED, NOT_FOUND, OK, iso

# The Unix times of `status`, printed as ISO 8601 UTC (worker/cli/formats.py).


def register(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="one job: state, result, attempts, last error")
    status.add_argument("task_id", help="the job id (= Celery task id) a producer got back")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=show_status)

    stats = subparsers.add_parser("stats", help="queue depths, dead letters, last hour's mail per realm")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=show_stats)


# ---- status -------------------------------------------------------------------------------------------


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
        print_json(status_json(info))
        return code
    order = ("job_id", "state", "status", "task", "realm", "attempts", "ambiguous", "maybe_delivered", "reason",
             "error", "retry", "last_error", "smtp_code", "message_id", "server", "sent_at", "died_at", "worker", "queue",
             "date_done")  # fmt: skip
    for name in order:
        if name in info:
            print(f"{name:11} {_shown(name, info[name])}")
    return code


def _shown(name: str, value: Any) -> str:
    if name in STATUS_TIMES and isinstance(value, int | float):
        return str(iso(value))
    return shown(value)


# ---- stats --------------------------------------------------------------------------------------------


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
