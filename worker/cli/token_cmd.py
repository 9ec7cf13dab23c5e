"""`mailworker token create|list|revoke`: API tokens for the HTTP API and the web console.

    mailworker token create --scope producer --realm acme --name "acme IAM server"   # prints the token alone
    mailworker token create --scope admin --json                                     # {id, token, scope, realms}
    mailworker token list [--json]
    mailworker token revoke ID

The token is shown once and stored only as its hash (worker/http/tokens.py): keep it where it is used.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import names_a_thing, print_json, shown, table
from worker.cli.formats import OK, iso


def register(subparsers: Any) -> None:
    token = subparsers.add_parser("token", help="API tokens: create, list, revoke")
    commands = token.add_subparsers(dest="token_command", required=True)
    create = commands.add_parser("create", help="a new token, printed once")
    create.add_argument("--scope", required=True, choices=["producer", "admin"],
                        help="producer: send mail; admin: also the realms' settings, dead letters, stats")  # fmt: skip
    create.add_argument(
        "--realm", action="append", default=[], help="only this realm (repeatable; default all)"
    )
    create.add_argument("--name", default="", help="what the token is for (shown by `token list`)")
    create.add_argument("--json", action="store_true", help="print {id, token, scope, realms, name}")
    create.set_defaults(handler=handle_create)
    listing = commands.add_parser("list", help="the tokens (never the tokens themselves)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)
    revoke = commands.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(handler=handle_revoke)


def _store() -> Any:
    from worker.http.tokens import TokenStore
    from worker.runtime import runtime

    rt = runtime()
    return TokenStore(rt.redis, rt.keys)


def handle_create(args: argparse.Namespace) -> int:
    created = _store().create(args.scope, args.realm, args.name)
    if args.json:
        print_json(
            {"token": created.token, **created.record.to_json(), "created_at": iso(created.record.created_at)}
        )
    else:
        print(created.token)
    return OK


def handle_list(args: argparse.Namespace) -> int:
    tokens = _store().list()
    if args.json:
        print_json({"tokens": [{**t.to_json(), "created_at": iso(t.created_at)} for t in tokens]})
        return OK
    rows = [[t.id, t.scope, ",".join(t.realms) or "(all)", iso(t.created_at), shown(t.name)] for t in tokens]
    print(table(rows, ["ID", "SCOPE", "REALMS", "CREATED", "NAME"]) if rows else "no tokens")
    return OK


@names_a_thing
def handle_revoke(args: argparse.Namespace) -> int:
    _store().revoke(args.token_id)
    print(f"token {args.token_id} revoked")
    return OK
