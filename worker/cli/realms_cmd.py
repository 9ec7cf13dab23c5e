"""`mailworker realms`: the realms with saved settings, their version, and whether a draft is pending."""

from __future__ import annotations

import argparse
from typing import Any

from tasks.views import realm_rows
from worker.cli.common import print_json, table
from worker.cli.formats import OK, cut_notice, page


def register(subparsers: Any) -> None:
    realms = subparsers.add_parser("realms", help="the realms with saved settings: version, draft pending")
    realms.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    realms.add_argument("--after", metavar="REALM", help="the page after this realm (the last one shown)")
    realms.add_argument("--json", action="store_true")
    realms.set_defaults(handler=list_realms)


def list_realms(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    names, next_after = page(
        runtime().store.realms(), key=lambda name: name, after=args.after, limit=args.limit
    )
    rows = realm_rows(names)
    if args.json:
        print_json({"realms": rows, "next_after": next_after})
        return OK
    if not rows:
        print("no realm has saved settings yet: `mailworker settings save --realm R --from ... --host ...`")
        return OK
    print(table([[r["realm"], str(r["version"]), r["saved_at"] or "-", r["by"] or "-",
                  "yes" if r["draft_pending"] else "no"] for r in rows],
                ["REALM", "VERSION", "SAVED_AT", "BY", "DRAFT"]))  # fmt: skip
    more = cut_notice(len(rows), next_after, "mailworker realms")
    if more:
        print(more)
    return OK
