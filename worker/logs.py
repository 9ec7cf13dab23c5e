"""Logging: one structured line per delivery attempt; JSON when MAILWORKER_LOG_FORMAT=json.

Never a password, never a message body: callers pass only the fields below.

Log lines carry what producers, ingest entries and SMTP servers sent (a field name, an error, a reply),
so nothing in them may forge a record or hide one:

- text: every record is one line. The message and every structured field go through `shown`
  (worker/cli/common.py): CR, LF, ESC, the other controls and the bidi overrides become visible escapes
  (\\n, \\x1b, \\u202e). A traceback stays readable on several lines, each continuation line
  prefixed with `  | ` (and escaped the same way): a record starts with its timestamp at the start of a
  line, which no continuation line can.
- json: one object per line; json_text escapes what json.dumps leaves raw (C1, U+2028, bidi, lone
  surrogates, which would make the stream's encoder drop the whole line).

Both redact the credentials of any URL in a line (config/redis.py redact_urls_in), the configured Redis
URLs' included wherever a library quotes them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from config.printable import json_text, shown
from config.redis import redact_urls_in
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


# Starts every line of a record but the first (a traceback, stack info): see the module's docstring.
CONTINUATION = "  | "


class JsonFormatter(logging.Formatter):
    def __init__(self, *, secret_urls: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secret_urls = secret_urls

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
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        for name, value in data.items():
            if isinstance(value, str):
                data[name] = redact_urls_in(value, *self.secret_urls)
        return json_text(data, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, secret_urls: tuple[str, ...] = ()) -> None:
        super().__init__(fmt)
        self.secret_urls = secret_urls

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{name}={value}" for name, value in fields.items())
        lines = [shown(self._redacted(line))]
        if record.exc_info:
            lines += self._continued(self.formatException(record.exc_info))
        if record.stack_info:
            lines += self._continued(self.formatStack(record.stack_info))
        return "\n".join(lines)

    def _continued(self, text: str) -> list[str]:
        return [CONTINUATION + shown(part) for part in self._redacted(text).split("\n")]

    def _redacted(self, text: str) -> str:
        return redact_urls_in(text, *self.secret_urls)


def configure_logging(settings: ServiceSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    urls = (settings.broker_url, settings.result_backend, settings.store_url)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(secret_urls=urls))
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", secret_urls=urls)
        )
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
