"""Logging: one structured line per delivery attempt; JSON when MAILWORKER_LOG_FORMAT=json.

Never a password, never a message body: callers pass only the fields below.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from config.settings import ServiceSettings

delivery_log = logging.getLogger("mailworker.delivery")

# Attributes every LogRecord has; anything else was passed in `extra` and is a structured field.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        return base + ("" if not fields else " " + " ".join(f"{k}={v}" for k, v in fields.items()))


def configure_logging(settings: ServiceSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def log_attempt(
    *,
    job_id: str,
    realm: str,
    template: str,
    attempt: int,
    outcome: str,
    smtp_code: int | None,
    ms: float,
    error: str | None = None,
) -> None:
    delivery_log.info(
        "delivery %s",
        outcome,
        extra={
            "job_id": job_id,
            "realm": realm,
            "template": template,
            "attempt": attempt,
            "outcome": outcome,
            "smtp_code": smtp_code,
            "ms": round(ms, 1),
            **({"error": error} if error else {}),
        },
    )
