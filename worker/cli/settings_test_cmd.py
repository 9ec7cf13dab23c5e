"""`mailworker settings test`: run the Test Connection probe on a worker and show each stage.

    mailworker settings test --realm acme                 # the draft when there is one, else the saved
    mailworker settings test --realm acme --saved --send-to admin@acme.example
    mailworker settings test --realm acme --json          # the status JSON (what the admin console shows)

Exit 0 when every tested stage passed, 1 otherwise (and for a user error: one line on stderr).
"""

from __future__ import annotations

import argparse
from typing import Any

import kombu.exceptions
import redis

from config.errors import ConfigError
from config.redis import redact_url
from worker.cli.common import print_json, shown, table
from worker.cli.editing import server_of

DEFAULT_WAIT_S = 60.0
MARKS = {True: "✓", False: "✗", None: "-"}


def register_test(settings_commands: Any) -> None:
    """Add `test` to the `settings` sub-commands (worker/cli/settings_cmd.py calls this)."""
    test = settings_commands.add_parser(
        "test",
        help="test the SMTP settings from a worker, stage by stage (the draft when there is one)",
        description="Enqueue a connection test on the control queue and show what a worker found: "
        "DNS, TCP, TLS, EHLO, AUTH and, with --send-to, a real test message.",
    )
    test.add_argument("--realm", required=True, help="realm name")
    test.add_argument("--secondary", action="store_true",
                      help="test the realm's secondary SMTP server (failover) instead of its primary")  # fmt: skip
    test.add_argument("--saved", action="store_true", help="test the saved settings even when a draft exists")
    test.add_argument("--send-to", metavar="ADDR", help="also send a test message to this address")
    test.add_argument("--json", action="store_true", help="print the status as JSON")
    test.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to wait for a worker's answer (default {DEFAULT_WAIT_S:g}); the probe ends before",
    )
    test.set_defaults(handler=handle_test)


def handle_test(args: argparse.Namespace) -> int:
    from tasks.connection import test_connection  # imports the Celery app: only when this command runs

    try:
        status = test_connection(
            args.realm, use_draft=not args.saved, send_to=args.send_to, timeout=args.timeout,
            server=server_of(args),
        )  # fmt: skip
    except redis.RedisError as error:
        from worker.runtime import runtime

        url = redact_url(runtime().settings.store_url)
        raise ConfigError(f"MAILWORKER_STORE_URL: Redis at {url} failed: {error}") from None
    except kombu.exceptions.OperationalError as error:
        from worker.runtime import runtime

        url = redact_url(runtime().settings.broker_url)
        raise ConfigError(f"MAILWORKER_BROKER_URL: the broker at {url} failed: {error}") from None
    if args.json:
        print_json(status)
    else:
        print(format_status(status))
    return 0 if status.get("ok") else 1


def format_status(status: dict[str, Any]) -> str:
    """The stages as a table, a verdict line and the hint."""
    lines = [shown(_heading(status))]
    stages = status.get("stages") or []
    if stages:
        rows = [
            [stage["name"], MARKS.get(stage["ok"], "?"), _ms(stage["ms"]), stage.get("detail") or ""]
            for stage in stages
        ]
        lines += ["", table(rows, ["stage", "ok", "ms", "detail"]), ""]
    lines.append(shown(verdict(status)))  # the server's reply is in it: untrusted text
    if status.get("hint"):
        lines.append(f"hint: {shown(status['hint'])}")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _heading(status: dict[str, Any]) -> str:
    realm = status.get("realm")
    if status.get("server"):
        realm = f"{realm} ({status['server']} server)"
    if status.get("source") is None:
        return f"realm {realm}"
    source = status["source"]
    version = status.get("version")
    if source == "draft":
        what = f"draft settings (based on version {version})" if version else "draft settings (never saved)"
    else:
        what = f"saved settings (version {version})"
    return (
        f"realm {realm}, {what}: {status.get('host')}:{status.get('port')} "
        f"{status.get('mode')}, limit {status.get('deadline_s', 0):g}s"
    )


def verdict(status: dict[str, Any]) -> str:
    if status.get("ok"):
        elapsed = f" in {status.get('elapsed_ms', 0):.0f} ms"
        sent = f"; test message accepted for {status['send_to']}" if status.get("send_to") else ""
        untested = status.get("not_tested") or []
        caveat = f" (not tested: {', '.join(untested)})" if untested else ""
        return f"✓ OK: the settings work{elapsed}{sent}{caveat}"
    stage = status.get("failed_stage")
    return f"✗ FAILED at {stage}: {status.get('error')}"
