"""`mailworker ingest`: move plain-JSON jobs pushed by producers in any language into Celery (worker/ingest.py)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest", help="consume the plain-JSON job list <prefix>:ingest (producers in other languages)"
    )
    parser.add_argument(
        "--name", default="default", help="consumer name; owns a processing list (default: default)"
    )
    parser.add_argument("--once", action="store_true", help="handle what is there now, then exit")
    parser.add_argument("--block", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_ingest)


def build_consumer(name: str, block: float) -> Any:
    from config.redis import connect
    from worker.ingest import IngestConsumer, ingest_client
    from worker.runtime import runtime

    rt = runtime()
    connect(
        rt.settings.store_url, sentinel=rt.settings.sentinel
    )  # unreachable Redis: one line naming MAILWORKER_STORE_URL

    def count_dead(realm: str) -> None:
        # Only realms that exist get counters: a producer's typo must not add a realm to `mailworker stats`.
        if realm in rt.store.realms():
            rt.stats.count(realm, "dead")

    return IngestConsumer(
        ingest_client(rt.settings.store_url, block, rt.settings.sentinel),
        rt.keys,
        rt.dead_letters,
        name=name,
        count_dead=count_dead,
    )


def run_ingest(args: argparse.Namespace) -> int:
    from worker.cli.common import shown
    from worker.logs import configure_logging
    from worker.runtime import runtime

    # With JSON, the --once summary printed below becomes a record as well (LinesToLog).
    configure_logging(runtime().settings, worker="ingest", whole_process=True)
    consumer = build_consumer(args.name, args.block)
    if args.once:
        print(f"handled {consumer.drain()} ingest entry(ies) from {shown(consumer.source)}")
        return 0
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    consumer.run(stop, block=args.block)
    return 0
