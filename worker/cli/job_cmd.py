"""`mailworker job JOB_ID [--watch] [--json]`, `job cancel JOB_ID` and `job list`: bulk jobs.

`--watch` exits 0 when the job ends done, 1 when it ends failed or cancelled; an unknown job id exits 3
(for `job cancel` too). `--watch --json` prints one JSON object per line (JSON Lines), each a progress as
`job JOB_ID --json` prints it.

$ mailworker job bulk-3f2a...
bulk-3f2a...  realm acme  template policy-change  running
[##############----------------]  47.0%  47,000/100,000
sent 46,990  failed 10  cancelled 0  pending 53,000  rate 3,105/s  elapsed 15s  eta 17s
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from config.errors import InvalidInput, NotFound
from tasks.views import progress_json
from worker.cli.common import names_a_thing, print_json, shown, table
from worker.cli.formats import FAILED, OK, cut_notice, iso, json_line, page

BAR_WIDTH = 30


def register(subparsers: Any) -> None:
    job = subparsers.add_parser(
        "job", help="a bulk job's progress (--watch to follow it); `job cancel JOB_ID`; `job list`"
    )
    job.add_argument("job_id", help="the bulk job id (send_bulk's return value), or `cancel`, or `list`")
    job.add_argument("cancel_id", nargs="?", metavar="JOB_ID", help="with `cancel`: the job to stop")
    job.add_argument(
        "--watch", "-w", action="store_true", help="redraw every --interval seconds until it ends"
    )
    job.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    job.add_argument("--json", action="store_true")
    job.add_argument("--limit", type=int, default=20, help="with `list`: at most this many (default 20)")
    job.add_argument("--after", metavar="JOB_ID", help="with `list`: the page after this job")
    job.set_defaults(handler=show_job)


def list_jobs(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    jobs = runtime().bulk_jobs
    chosen, next_after = page(jobs.newest(), key=lambda job_id: job_id, after=args.after, limit=args.limit)
    found = []
    for job_id in chosen:
        with contextlib.suppress(NotFound):  # expired between the index and now
            found.append(jobs.progress(job_id).to_dict())
    if args.json:
        print_json({"jobs": [progress_json(p) for p in found], "next_after": next_after})
        return OK
    if not found:
        print("no bulk jobs")
        return OK
    rows = [[p["job_id"], p["realm"], p["template"], p["state"], f"{p['sent']:,}/{p['total']:,}",
             str(p["failed"]), str(iso(p["created_at"]))] for p in found]  # fmt: skip
    print(table(rows, ["JOB", "REALM", "TEMPLATE", "STATE", "SENT", "FAILED", "CREATED"]))
    more = cut_notice(len(found), next_after, "mailworker job list")
    if more:
        print(more)
    return OK


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def render_progress(p: dict[str, Any], now: float | None = None) -> str:
    """Three lines: what, a bar, the counters with rate and ETA. The job's names and error are shown():
    they come from the producer and the SMTP server, and --watch redraws with escape sequences of its own."""
    now = now if now is not None else time.time()
    total = p["total"] or 0
    settled = p["sent"] + p["failed"] + p["cancelled"] + p.get("suppressed", 0)
    share = settled / total if total else 1.0
    filled = int(share * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    head = shown(f"{p['job_id']}  realm {p['realm']}  template {p['template']}  {p['state']}")
    if p.get("error"):
        head += f"  ({shown(p['error'])})"
    counts = (
        f"sent {p['sent']:,}  failed {p['failed']:,}  cancelled {p['cancelled']:,}  "
        + (f"suppressed {p['suppressed']:,}  " if p.get("suppressed") else "")
        + f"pending {p['pending']:,}"
        f"  rate {p['rate']:,.0f}/s"
    )
    if p.get("started_at"):
        end = p.get("finished_at") or now
        counts += f"  elapsed {_duration(end - p['started_at'])}"
        if not p.get("finished_at") and p["rate"] > 0 and p["pending"]:
            counts += f"  eta {_duration(p['pending'] / p['rate'])}"
    return f"{head}\n[{bar}] {share * 100:5.1f}%  {settled:,}/{total:,}\n{counts}"


@names_a_thing
def show_job(args: argparse.Namespace) -> int:
    from tasks import api

    if args.job_id == "list":
        return list_jobs(args)
    if args.job_id == "cancel":
        if not args.cancel_id:
            raise InvalidInput.one("JOB_ID", "name the job to cancel: mailworker job cancel JOB_ID")
        state = api.cancel_bulk(args.cancel_id)
        ended = "" if state == "cancelled" else " (it had ended already)"
        print(f"{shown(args.cancel_id)}: {shown(state)}{ended}")
        return 0
    if args.cancel_id:
        raise InvalidInput.one(
            "JOB_ID", f"unexpected {args.cancel_id!r}: did you mean `job cancel {args.job_id}`?"
        )
    if args.interval <= 0:
        raise InvalidInput.one("--interval", "must be a positive number of seconds")
    progress = api.bulk_progress(args.job_id)
    if args.json and not args.watch:
        print_json(progress_json(progress))
        return OK
    live = args.watch and sys.stdout.isatty() and not args.json
    lines = 0
    while True:
        if args.json:
            print(json_line(progress_json(progress)), flush=True)  # JSON Lines: one object per line
        else:
            text = render_progress(progress)
            if live and lines:
                sys.stdout.write(f"\x1b[{lines}F\x1b[J")  # back to the first line of the last drawing
            print(text, flush=True)
            lines = text.count("\n") + 1
        finished = (
            progress["state"] in ("done", "cancelled", "failed")
            and progress["chunks_done"] >= progress["chunks"]
        )
        if not args.watch:
            return OK
        if finished:
            return OK if progress["state"] == "done" else FAILED
        time.sleep(args.interval)
        progress = api.bulk_progress(args.job_id)
