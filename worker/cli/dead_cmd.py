"""`mailworker dead list|show|requeue|purge`: the jobs that could not be delivered.

An unknown job id (`dead show`, `dead requeue`) exits 3, as for `status` (worker/cli/formats.py).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from config.errors import InvalidInput
from tasks.views import letter_json
from worker.cli.common import names_a_thing, print_json, shown, table
from worker.cli.formats import cut_notice, duration, page
from worker.jobs.deadletters import REASONS


def register(subparsers: Any) -> None:
    dead = subparsers.add_parser("dead", help="dead letters: list, show, requeue, purge")
    commands = dead.add_subparsers(dest="dead_command", required=True)

    listing = commands.add_parser("list", help="dead jobs, newest first, a page at a time")
    listing.add_argument("--realm")
    listing.add_argument("--reason", choices=REASONS)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--after", metavar="JOB_ID", help="the page after this job (the last one shown)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_dead)

    show = commands.add_parser("show", help="one dead job with its reason and last error")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_dead)

    requeue = commands.add_parser("requeue", help="send dead jobs again (fresh attempt count)")
    requeue.add_argument("job_ids", nargs="*")
    requeue.add_argument("--all", action="store_true", help="every dead job (with --realm / --reason: those)")
    requeue.add_argument("--realm")
    requeue.add_argument("--reason", choices=REASONS)
    requeue.set_defaults(handler=requeue_dead)

    purge = commands.add_parser("purge", help="delete dead jobs")
    purge.add_argument("--realm")
    purge.add_argument("--reason", choices=REASONS)
    purge.add_argument("--older-than", type=duration, metavar="DURATION",
                       help="only those dead longer than this: 3600, 90m, 12h, 7d, 2w")  # fmt: skip
    purge.add_argument("--yes", action="store_true", help="really delete")
    purge.set_defaults(handler=purge_dead)


def _ago(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def list_dead(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    found = runtime().dead_letters.list(realm=args.realm, reason=args.reason, limit=10**9)
    letters, next_after = page(found, key=lambda lt: lt.job_id, after=args.after, limit=args.limit)
    if args.json:
        print_json({"dead_letters": [letter_json(lt) for lt in letters], "next_after": next_after})
        return 0
    if not letters:
        print("no dead letters")
        return 0
    rows = [
        [
            lt.job_id,
            lt.realm,
            lt.template,
            lt.to,
            lt.reason,
            str(lt.attempts),
            _ago(lt.died_at),
            lt.error[:80],
        ]
        for lt in letters
    ]
    print(table(rows, ["JOB", "REALM", "TEMPLATE", "TO", "REASON", "ATTEMPTS", "DIED", "ERROR"]))
    more = cut_notice(len(letters), next_after, "mailworker dead list")
    if more:
        print(more)
    return 0


@names_a_thing
def show_dead(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    letter = runtime().dead_letters.get(args.job_id)
    if args.json:
        print_json(letter_json(letter))
        return 0
    for name, value in letter_json(letter).items():
        print(f"{name:17} {shown(value)}")
    return 0


@names_a_thing
def requeue_dead(args: argparse.Namespace) -> int:
    from tasks.api import requeue_dead_letter
    from worker.runtime import runtime

    if args.all:
        ids = [
            lt.job_id for lt in runtime().dead_letters.list(realm=args.realm, reason=args.reason, limit=10**9)
        ]
    elif args.job_ids:
        ids = args.job_ids
    else:
        raise InvalidInput.one("job_ids", "name at least one job id, or --all")
    for job_id in ids:
        requeue_dead_letter(job_id)
        print(f"requeued {shown(job_id)}")
    if not ids:
        print("no dead letters to requeue")
    return 0


def purge_dead(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    if not args.yes:
        raise InvalidInput.one("--yes", "purge deletes dead letters for good: add --yes to confirm")
    removed = runtime().dead_letters.purge(realm=args.realm, reason=args.reason, older_than=args.older_than)
    print(f"purged {removed} dead letter(s)")
    return 0
