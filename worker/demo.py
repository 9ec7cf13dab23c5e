"""`make demo`: the real pipeline on one machine with nothing installed but this package.

A local SMTP server catches mail on loopback; a Celery worker runs in this process on an in-memory
broker (or on Redis with --redis URL); three e-mails go through producer API -> queue -> worker ->
templates -> MIME -> SMTP, and each is printed as received and written to ./outbox/ as an .eml file.

Quiet by default: only warnings and errors of the service; --verbose shows its log lines at INFO and the
SMTP conversation as the server saw it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import threading
import time
import unicodedata
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

OUTBOX = Path("outbox")
REALM = "demo"
REALM_NAME = "Demo Realm"  # what the mails call the realm; an event carries it as realmName
USER = {"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com"}


class CatchingHandler:
    """aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.arrived.notify_all()
        return "250 2.0.0 OK: caught by the demo server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure_environment(redis_url: str | None, verbose: bool = False) -> None:
    """Before anything reads the settings: in-memory broker and store, unless a Redis is given."""
    from cryptography.fernet import Fernet

    if redis_url:
        os.environ.update(
            MAILWORKER_BROKER_URL=redis_url, MAILWORKER_RESULT_BACKEND=redis_url, MAILWORKER_STORE_URL=redis_url,
            MAILWORKER_KEY_PREFIX="mailworker-demo", MAILWORKER_BROKER_KEY_PREFIX="mailworker-demo:",
        )  # fmt: skip
    else:
        os.environ.update(
            MAILWORKER_BROKER_URL="memory://localhost/", MAILWORKER_RESULT_BACKEND="cache+memory://",
            MAILWORKER_STORE_URL="memory://",
        )  # fmt: skip
    os.environ.setdefault("MAILWORKER_SECRET_KEY", Fernet.generate_key().decode())
    os.environ["MAILWORKER_RECIPIENT_COOLDOWN"] = "0"
    # INFO with --verbose: every delivery line, Celery's, and the SMTP server's trace (aiosmtpd's mail.log).
    os.environ["MAILWORKER_LOG_LEVEL"] = "INFO" if verbose else "WARNING"


def outbox_name(number: int, subject: str) -> str:
    """An ASCII file name from the subject: `2-setzen-sie-ihr-passwort-zuruck.eml`."""
    ascii_subject = unicodedata.normalize("NFKD", subject).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_subject.lower()).strip("-")[:48].rstrip("-")
    return f"{number}-{slug or 'message'}.eml"


def show(number: int, raw: bytes, envelope_from: str) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    print(f"\n=== e-mail {number}: {message['Subject']}")
    print(f"Return-Path (MAIL FROM): {envelope_from}")
    for name in ("From", "Reply-To", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "Content-Type"):
        if message[name] is not None:
            print(f"{name}: {message[name]}")
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    print(f"--- text part ({'and an HTML part' if html is not None else 'no HTML part'})")
    print(text.get_content().strip() if text is not None else "(none)")
    return message


def run(redis_url: str | None, verbose: bool = False) -> int:
    configure_environment(redis_url, verbose)
    from aiosmtpd.controller import Controller
    from celery.contrib.testing.worker import start_worker

    from tasks import api
    from worker.app import CONTROL, TRANSACTIONAL, app
    from worker.runtime import runtime

    handler = CatchingHandler()
    port = free_port()
    smtp = Controller(handler, hostname="127.0.0.1", port=port)
    smtp.start()
    print(f"SMTP server catching mail on 127.0.0.1:{port}")
    print(f"broker: {'Redis ' + redis_url if redis_url else 'in memory'}; worker: in this process")
    try:
        runtime().store.save(
            REALM,
            {"from": "noreply@demo.example", "from_display_name": "Demo IAM",
             "reply_to": "support@demo.example", "reply_to_display_name": "Demo Support",
             "envelope_from": "bounces@demo.example", "host": "127.0.0.1", "port": port},
        )  # fmt: skip
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[TRANSACTIONAL, CONTROL],
                          loglevel="INFO" if verbose else "WARNING", shutdown_timeout=30):  # fmt: skip
            jobs = [
                api.send_email(REALM, "email-verification", USER["email"], context={
                    "user": USER, "realm_name": REALM_NAME,
                    "link": "https://iam.demo.example/realms/demo/verify?key=abc123", "link_expiration": 720}),
                api.send_email(REALM, "password-reset", USER["email"], locale="de", context={
                    "user": USER, "realm_name": REALM_NAME,
                    "link": "https://iam.demo.example/realms/demo/reset?key=def456", "link_expiration": 5}),
                api.publish_event(REALM, {
                    "id": f"demo-{time.time_ns()}", "type": "LOGIN_ERROR", "time": int(time.time() * 1000),
                    "ipAddress": "203.0.113.7", "clientId": "account-console", "error": "invalid_user_credentials",
                    "realmName": REALM_NAME,
                    "user": {"email": USER["email"], "firstName": "Alice", "username": "alice", "locale": "fr"}}),
            ]  # fmt: skip
            results = [api.wait_for_result(job_id, timeout=60) for job_id in jobs if job_id]
    finally:
        smtp.stop()
    failed = [r for r in results if r.get("status") != "sent"]
    OUTBOX.mkdir(exist_ok=True)
    for number, (envelope_from, _rcpts, raw) in enumerate(handler.messages, start=1):
        message = show(number, raw, envelope_from)
        path = OUTBOX / outbox_name(number, str(message["Subject"]))
        path.write_bytes(raw)
        print(f"--- written to {path}")
    print(f"\n{len(handler.messages)} e-mail(s) received; results: {[r.get('status') for r in results]}")
    if failed or len(handler.messages) != 3:
        print(f"error: the demo expected 3 delivered e-mails: {failed}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", metavar="URL", default=os.environ.get("MAILWORKER_DEMO_REDIS_URL"),
                        help="use this Redis for broker, results and settings instead of memory")  # fmt: skip
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the service's log lines and the SMTP conversation")  # fmt: skip
    args = parser.parse_args()
    return run(args.redis, args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
