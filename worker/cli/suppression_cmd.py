"""`mailworker suppression list|remove --realm R [ADDRESS]`: the realm's suppressed addresses.

A hard bounce or a complaint suppresses an address for bulk notices (worker/bounces/suppression.py);
`remove` lets it receive them again at once (the user fixed the mailbox). An address not on the list
exits 3, as an unknown id does elsewhere.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from config.errors import NotFound
from config.names import check_realm
from worker.cli.common import names_a_thing, print_json, table


def register(subparsers: Any) -> None:
    suppression = subparsers.add_parser("suppression", help="addresses suppressed for bulk: list, remove")
    commands = suppression.add_subparsers(dest="suppression_command", required=True)

    listing = commands.add_parser("list", help="the realm's suppressed addresses, newest first")
    listing.add_argument("--realm", required=True, help="realm name")
    listing.add_argument("address", nargs="?", help="only this address")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_suppressed)

    remove = commands.add_parser("remove", help="let an address receive bulk notices again")
    remove.add_argument("--realm", required=True, help="realm name")
    remove.add_argument("address")
    remove.set_defaults(handler=remove_suppressed)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def list_suppressed(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    entries = runtime().suppressions.list(check_realm(args.realm))
    if args.address:
        entries = [e for e in entries if e.address == args.address.strip().lower()]
    if args.json:
        print_json({"realm": args.realm, "suppressions": [e.to_json() for e in entries]})
        return 0
    if not entries:
        print(f"no suppressed address in realm {args.realm}")
        return 0
    rows = [
        [e.address, e.reason, e.status or "-", _when(e.since), _when(e.until), e.job_id or "-"]
        for e in entries
    ]
    print(table(rows, ["address", "reason", "status", "since (UTC)", "until (UTC)", "job"]))
    return 0


@names_a_thing
def remove_suppressed(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    if not runtime().suppressions.remove(check_realm(args.realm), args.address):
        raise NotFound(f"{args.address} is not suppressed in realm {args.realm}")
    print(f"removed {args.address} from realm {args.realm}'s suppression list")
    return 0
