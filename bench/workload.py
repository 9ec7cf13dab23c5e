"""What the bench sends and where: the two realms, the templates and their context, the service's settings.

Every phase sends the same content, so the service, the naive baseline and the ceiling differ only in how
they send it: `email-verification` for bulk, naive and ceiling, `password-reset` for the transactional
latency load, one CONTEXT for all.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bench.harness import ROOT

if TYPE_CHECKING:
    from bench.harness import BenchRedis
    from bench.sink import AioSink, Sink

BULK_REALM = "bench-bulk"
TX_REALM = "bench-tx"
TEMPLATE = "email-verification"
TX_TEMPLATE = "password-reset"
USER = {"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com"}
CONTEXT = {
    "user": USER,
    "realm_name": "ACME Bank",
    "link": "https://iam.example.com/verify?key=0123456789abcdef",
    "link_expiration": 720,
}


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def service_env(redis: BenchRedis) -> dict[str, str]:
    """The service's configuration for the bench: everything on the bench's own Redis, keys prefixed."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_")}
    env.update(
        MAILWORKER_BROKER_URL=redis.url_for(0),
        MAILWORKER_RESULT_BACKEND=redis.url_for(0),
        MAILWORKER_STORE_URL=redis.url_for(0),
        MAILWORKER_SECRET_KEY=Fernet.generate_key().decode(),
        MAILWORKER_KEY_PREFIX="mwbench",
        MAILWORKER_BROKER_KEY_PREFIX="",
        MAILWORKER_RECIPIENT_COOLDOWN="0",
        MAILWORKER_LOG_LEVEL="WARNING",
        MAILWORKER_RESULT_EXPIRES="3600",
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def save_realms(bulk_sink: Sink, latency_sink: AioSink) -> None:
    from worker.runtime import runtime

    store = runtime().store
    store.save(
        BULK_REALM,
        {
            "from": "noreply@bench.example",
            "from_display_name": "ACME Identity",
            "host": bulk_sink.host,
            "port": bulk_sink.port,
        },
    )
    store.save(
        TX_REALM,
        {
            "from": "noreply@bench.example",
            "from_display_name": "ACME Identity",
            "host": latency_sink.host,
            "port": latency_sink.port,
        },
    )


def prebuilt_messages(n: int) -> list[tuple[str, list[str], bytes]]:
    """n messages built by the service's own builder (same template and size as the bulk)."""
    from config.smtp import parse_smtp_settings
    from worker.content.message import build_message
    from worker.content.render import TemplateRenderer

    settings = parse_smtp_settings({"from": "noreply@bench.example", "host": "127.0.0.1"})
    rendered = TemplateRenderer(None).render(BULK_REALM, TEMPLATE, None, CONTEXT)
    out = []
    for i in range(n):
        msg = build_message(settings, rendered, f"user{i}@example.com")
        out.append((msg.envelope_from, list(msg.recipients), msg.data))
    return out
