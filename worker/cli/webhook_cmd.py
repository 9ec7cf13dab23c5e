"""`mailworker webhook add|list|remove|test`: a realm's delivery webhooks (docs/webhooks.md).

    mailworker webhook add --realm acme --url https://iam.acme.example/hooks/mail --events sent,dead_lettered
    mailworker webhook list [--realm acme] [--json]
    mailworker webhook remove wh_0123456789abcdef
    mailworker webhook test wh_0123456789abcdef

`add` prints the endpoint's signing secret once (`whsec_...`); it is stored only sealed, and every other
output shows it masked. `test` sends a signed `test` ping from this process and reports the answer: exit 0
for a 2xx, 1 otherwise. An unknown endpoint id is exit 3 (worker/cli/formats.py).
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import names_a_thing, print_json, shown, table
from worker.cli.formats import FAILED, OK, iso
from worker.outcomes.outcome import EVENTS


def register(subparsers: Any) -> None:
    webhook = subparsers.add_parser("webhook", help="delivery webhooks: add, list, remove, test")
    commands = webhook.add_subparsers(dest="webhook_command", required=True)
    add = commands.add_parser("add", help="a new endpoint; prints its id and, once, its signing secret")
    add.add_argument("--realm", required=True)
    add.add_argument("--url", required=True, help="https://... (http only to this machine, for tests)")
    add.add_argument("--events", required=True, help=f"comma-separated: {','.join(EVENTS)}")
    add.add_argument("--json", action="store_true", help="print {id, realm, url, events, secret, ...}")
    add.set_defaults(handler=handle_add)
    listing = commands.add_parser("list", help="the endpoints (secrets masked)")
    listing.add_argument("--realm")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)
    remove = commands.add_parser("remove", help="delete an endpoint: it gets no more events")
    remove.add_argument("endpoint_id", metavar="ID")
    remove.set_defaults(handler=handle_remove)
    test = commands.add_parser("test", help="send a signed `test` ping now and show the receiver's answer")
    test.add_argument("endpoint_id", metavar="ID")
    test.add_argument("--json", action="store_true")
    test.set_defaults(handler=handle_test)


def endpoint_json(endpoint: Any) -> dict[str, Any]:
    return {**endpoint.public(), "created_at": iso(endpoint.created_at)}


def handle_add(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    endpoint, secret = runtime().webhooks.add(args.realm, args.url, args.events.split(","))
    if args.json:
        print_json({**endpoint_json(endpoint), "secret": secret})
    else:
        print(f"webhook {endpoint.id} added for realm {shown(endpoint.realm)}: {', '.join(endpoint.events)}")
        print(f"signing secret (shown once, keep it with the receiver): {secret}")
    return OK


def handle_list(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    endpoints = runtime().webhooks.list(args.realm)
    if args.json:
        print_json({"webhooks": [endpoint_json(e) for e in endpoints]})
        return OK
    rows = [[e.id, e.realm, e.url, ",".join(e.events), e.public()["secret"], iso(e.created_at),
             "disabled: " + e.disabled if e.disabled else "enabled"] for e in endpoints]  # fmt: skip
    print(
        table(rows, ["ID", "REALM", "URL", "EVENTS", "SECRET", "CREATED", "STATE"]) if rows else "no webhooks"
    )
    return OK


@names_a_thing
def handle_remove(args: argparse.Namespace) -> int:
    from config.errors import NotFound
    from worker.runtime import runtime

    if not runtime().webhooks.remove(args.endpoint_id):
        raise NotFound(f"no webhook endpoint {args.endpoint_id!r}: see `mailworker webhook list`")
    print(f"webhook {shown(args.endpoint_id)} removed")
    return OK


@names_a_thing
def handle_test(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    answer = runtime().webhook_delivery.test(args.endpoint_id)
    if args.json:
        print_json({"ok": answer.ok, "http_status": answer.status, "error": answer.error})
    elif answer.ok:
        print(f"the receiver answered {answer.status}")
    else:
        print(f"the receiver did not accept the ping: {shown(answer.error)}")
    return OK if answer.ok else FAILED
