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

# The structured fields a line may carry. A whitelist, not "every extra": Celery passes the task's
# arguments and result as `extra={"data": ...}`, and arguments hold reset links and personal data.
STRUCTURED_FIELDS = (
    "job_id",
    "realm",
    "template",
    "attempt",
    "outcome",
    "smtp_code",
    "ms",
    "error",
    "task_id",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in STRUCTURED_FIELDS if hasattr(record, name)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = _fields(record)
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
