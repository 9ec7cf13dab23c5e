"""`mailworker bounces`: the bounce receiver (worker/bounces/receiver.py), and the messages it kept.

    mailworker bounces                                # SMTP on 127.0.0.1:2526
    mailworker bounces --host 127.0.0.1 --port 24 --lmtp
    mailworker bounces --unmapped [--limit 20] [--json]   # what it could not map, newest first

It needs MAILWORKER_SECRET_KEY (the VERP token's signature is checked with it).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from worker.cli.common import print_json, table


def register(subparsers: Any) -> None:
    from worker.bounces.receiver import DEFAULT_HOST, DEFAULT_PORT

    bounces = subparsers.add_parser(
        "bounces", help="receive bounces and complaints (SMTP/LMTP), or list unmapped"
    )
    bounces.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    bounces.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    bounces.add_argument(
        "--lmtp", action="store_true", help="speak LMTP instead of SMTP (a Postfix transport)"
    )
    bounces.add_argument(
        "--unmapped", action="store_true", help="list the messages kept because no job matched"
    )
    bounces.add_argument(
        "--limit", type=int, default=50, help="with --unmapped: at most this many (default 50)"
    )
    bounces.add_argument("--json", action="store_true", help="with --unmapped: print JSON")
    bounces.set_defaults(handler=run_bounces)


def run_bounces(args: argparse.Namespace) -> int:
    if args.unmapped:
        return list_unmapped(args)
    from worker.bounces.receiver import AddressBook, BounceHandler, start
    from worker.logs import configure_logging
    from worker.runtime import runtime

    rt = runtime()
    configure_logging(rt.settings, worker="bounces")  # a message it could not record is logged, with why

    def realm_fields() -> dict[str, dict[str, Any]]:
        return {realm: fields for realm in rt.store.realms() if (fields := rt.store.saved_fields(realm))}

    handler = BounceHandler(AddressBook(realm_fields), rt.bounces)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    controller = start(handler, args.host, args.port, lmtp=args.lmtp)
    print(f"receiving bounces ({'LMTP' if args.lmtp else 'SMTP'}) on {args.host}:{args.port}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()
    return 0


def list_unmapped(args: argparse.Namespace) -> int:
    from worker.bounces.record import kept_messages
    from worker.runtime import runtime

    rt = runtime()
    kept = kept_messages(rt.redis, rt.keys, limit=args.limit)
    if args.json:
        print_json({"unmapped": kept})
        return 0
    if not kept:
        print("no unmapped bounces")
        return 0
    rows = [[time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["received_at"])), ",".join(entry["realms"]),
             entry["rcpt"], str(entry["size"]), entry["why"]] for entry in kept]  # fmt: skip
    print(table(rows, ["received (UTC)", "realms", "rcpt", "bytes", "why"]))
    return 0
