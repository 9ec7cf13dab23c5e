"""The `mailworker` command: exit 0 on success; on error one clear line on stderr and exit 1.

Every exit code is listed in worker/cli/formats.py (and docs/cli.md): 2 for a usage error, as argparse
does, and a few more for checks (`status`, `job --watch`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from typing import Any

import kombu.exceptions
import redis

from config.errors import MailWorkerError
from config.redis import redact_urls_in
from worker.cli.common import fail, shown
from worker.cli.formats import BROKEN_PIPE, INTERRUPTED, USAGE

# Each sub-command module exposes register(subparsers); its parsers set `handler` to a function taking
# the parsed arguments and returning the exit code.
COMMAND_MODULES = [
    "worker.cli.settings_cmd",
    "worker.cli.worker_cmd",
    "worker.cli.dead_cmd",
    "worker.cli.job_cmd",
    "worker.cli.ops_cmd",
    "worker.cli.health_cmd",
    "worker.cli.realms_cmd",
    "worker.cli.ingest_cmd",
    "worker.cli.serve_cmd",
    "worker.cli.token_cmd",
    "worker.cli.webhook_cmd",
    "worker.cli.bounces_cmd",
    "worker.cli.suppression_cmd",
]


class _Parser(argparse.ArgumentParser):
    deepest: str | None = None  # the prog of the innermost (sub)command parsed, e.g. "mailworker dead list"

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        _Parser.deepest = self.prog
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, pointing to the help of the (sub)command that was mistyped: an unknown option is
        # reported by the top parser, but belongs to the innermost command. Exit 2, argparse's convention.
        prog = (
            _Parser.deepest if message.startswith("unrecognized arguments") and _Parser.deepest else self.prog
        )
        print(f"error: {shown(message)} (see `{prog} --help`)", file=sys.stderr)
        raise SystemExit(USAGE)


def version() -> str:
    try:
        return metadata.version("iam-mail-worker")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailworker", description="iam-mail-worker: the IAM server's e-mail, via Celery.")
    parser.add_argument("--version", action="version", version=f"mailworker {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Building the parser imports the commands, which read the service settings: a malformed
        # MAILWORKER_* variable is one line here too, not a traceback.
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except MailWorkerError as error:
        return fail(str(error))
    except (redis.RedisError, kombu.exceptions.OperationalError) as error:
        return fail(
            f"Redis failed: {redact_urls_in(str(error))} (check MAILWORKER_STORE_URL and MAILWORKER_BROKER_URL)"
        )
    except KeyboardInterrupt:
        return fail("interrupted", INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`mailworker dead list | head`): no traceback, and none at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


def run() -> None:
    """The console script: main(), then flush here, where a closed pipe can still be caught."""
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = BROKEN_PIPE
    raise SystemExit(code)


if __name__ == "__main__":
    run()
