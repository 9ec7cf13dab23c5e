"""The `mailworker` command: exit 0 on success; on error one clear line on stderr and exit 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from config.errors import MailWorkerError
from worker.cli.common import fail, shown

# Each sub-command module exposes register(subparsers); its parsers set `handler` to a function taking
# the parsed arguments and returning the exit code.
COMMAND_MODULES = [
    "worker.cli.settings_cmd",
    "worker.cli.worker_cmd",
    "worker.cli.dead_cmd",
    "worker.cli.job_cmd",
    "worker.cli.ops_cmd",
    "worker.cli.health_cmd",
    "worker.cli.ingest_cmd",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit 1, like every other user mistake (argparse's default is usage + exit 2).
        print(f"error: {shown(message)} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailworker", description="iam-mail-worker: the IAM server's e-mail, via Celery.")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except MailWorkerError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
