"""The naive baseline: the common design, written straight, to measure the service against.

One Celery task per message; the task renders the template, builds an `email.message.EmailMessage`
(default policy) and sends it on a new `smtplib.SMTP` connection, closed after the message. Celery's
defaults otherwise (prefork pool, prefetch 4, early acknowledgement), results ignored, JSON.

What it shares with the service so that the ratio measures the design and not the content: the same
templates rendered by the same renderer (`worker.content.render.TemplateRenderer`), the same sink, the same Redis
server (its own database), the same number of worker processes. Two things are done the way a careful
author would, not the slowest way: `local_hostname` and the Message-ID domain are given, so neither
`smtplib` nor `make_msgid` looks up the machine's FQDN per message.

    BENCH_NAIVE_BROKER=redis://127.0.0.1:P/1 BENCH_SMTP_HOST=127.0.0.1 BENCH_SMTP_PORT=25 \
        celery -A bench.naive worker -Q naive -c 2
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from functools import lru_cache
from typing import Any

from celery import Celery

QUEUE = "naive"
REALM = "bench-naive"
FROM = ("ACME Identity", "noreply@bench.example")

app = Celery("bench-naive", broker=os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)


@lru_cache(maxsize=1)
def _renderer() -> Any:
    from worker.content.render import TemplateRenderer

    return TemplateRenderer(None)


def build(to: str, template: str, locale: str | None, context: dict[str, Any]) -> EmailMessage:
    rendered = _renderer().render(REALM, template, locale, context)
    msg = EmailMessage()
    msg["From"] = formataddr(FROM)
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=FROM[1].rpartition("@")[2])
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


@app.task(
    name="naive.send_email",
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=True,
    max_retries=5,
)
def send_email(to: str, template: str, context: dict[str, Any], locale: str | None = None) -> None:
    msg = build(to, template, locale, context)
    host = os.environ.get("BENCH_SMTP_HOST", "127.0.0.1")
    port = int(os.environ.get("BENCH_SMTP_PORT", "25"))
    with smtplib.SMTP(host, port, local_hostname="localhost", timeout=30) as smtp:
        smtp.send_message(msg)
