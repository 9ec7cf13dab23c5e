"""Logging: one line per record, text or JSON (MAILWORKER_LOG_FORMAT), on stderr; no password, no body.

Reading the logs
----------------

Every long-running process logs this way: `mailworker worker` (the supervisor, `worker=supervisor`), each
Celery worker it starts or `mailworker worker --queues` runs (main process and pool children,
`worker=<group>@<host>`, the Celery node name; `celery -A worker.app worker` too) and `mailworker ingest`
(`worker=ingest`).

Line format. Text (the default), one record per line::

    2026-05-04 10:00:00,123 INFO mailworker.delivery: delivery sent job_id=... realm=acme
        template=password-reset attempt=1 outcome=sent smtp_code=250 ms=23.5 host=mx1 pid=4242
        worker=transactional@mx1

(one line; wrapped here). A traceback follows on lines starting with `  | `; Celery's banner is printed
at a worker's start as before. JSON
(MAILWORKER_LOG_FORMAT=json): one object per line, and with it every line the process writes on stdout or
stderr, nothing else: no Celery banner (a `worker ... starting` record says the node, its queues and
concurrency instead), Python warnings and Celery's own notices (`worker: Warm shutdown`) as records, and
whatever else a process prints, or an uncaught exception, as a record of `mailworker.stdout` (INFO),
`mailworker.stderr` (ERROR) or `mailworker` (CRITICAL)::

    {"ts": "2026-05-04T10:00:00.123Z", "level": "INFO", "logger": "mailworker.delivery",
     "msg": "delivery sent", "job_id": "...", "realm": "acme", "template": "password-reset",
     "attempt": 1, "outcome": "sent", "smtp_code": 250, "ms": 23.5, "host": "mx1", "pid": 4242,
     "worker": "transactional@mx1"}

Fields. Always `ts` (UTC), `level`, `logger`, `msg`, and who wrote the line: `host`, `pid` (a pool child's
own), `worker`. A delivery attempt (logger `mailworker.delivery`) adds `job_id`, `realm`, `template`,
`attempt`, `outcome`, `smtp_code`, `ms` and, when it failed, `error`; a record with a traceback adds `exc`
(JSON). Never a message body, a password, or a task's arguments or result; and an attempt line never names
the recipient: an address its error quotes (a refused recipient) shows as `***@example.com` (the dead
letter keeps the error whole). Celery's "Task ... succeeded in ...: <result>" line (the result names the
recipient) is cut to "Task ... succeeded in ...s" and logged at DEBUG; its "raised expected:
DeadLettered(...)" to "Task ... ended as a dead letter", at DEBUG.

Levels, one line per attempt (`level_for`):

    =====================================  =======  ===========================================
    outcome                                level    meaning
    =====================================  =======  ===========================================
    sent                                   INFO     the server accepted the mail
    retry, retry:circuit-open              INFO     transient failure, tried again later
    dropped:cooldown                       INFO     same mail to the same recipient just before
    dead:<reason> (permanent, expired,     WARNING  dead-lettered: this job will not be sent
    exhausted, ambiguous, template, ...)
    dead:settings                          ERROR    the realm's settings fail (auth, TLS, none
                                                    saved): every mail of the realm fails alike
    dead:internal                          ERROR    a bug or an unforeseen input
    =====================================  =======  ===========================================

Alert on ERROR; watch the rate of WARNING. A job that fails with an unexpected error (dead-lettered as
`internal`) is logged by tasks/runner.py as "job <id> failed with an unexpected error" at ERROR, with its
traceback, rather than as an attempt line.

A job's outcome. Celery's own state of a dead-lettered job is FAILURE with `DeadLettered(<reason>:
<error>)` (tasks/outcomes.py), so Flower and `celery events` show it failed; Celery's own line for it is
cut and logged at DEBUG, like its success line. The job's attempt lines say more (`job_id=<id>`: one per
attempt, the last one says sent, dropped or dead:<reason>), and so do `mailworker status <id>` (state,
attempts, last error) and `mailworker dead show <id>`.

Safety
------

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

import contextlib
import logging
import os
import re
import socket
import sys
import time
from typing import Any

from celery.app.trace import LOG_FAILURE, LOG_SUCCESS

from config.printable import json_text, shown
from config.redis import redact_urls_in
from config.settings import ServiceSettings
from worker.log_output import beneath, take_over_output

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
# Who wrote the line (ProcessFields): last, after what the line is about.
PROCESS_FIELDS = ("host", "pid", "worker")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    names = (*STRUCTURED_FIELDS, *PROCESS_FIELDS)
    return {name: getattr(record, name) for name in names if hasattr(record, name)}


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


# ---- who wrote the line ----------------------------------------------------------------------------------


class ProcessFields(logging.Filter):
    """Adds `host`, `pid` and `worker` to every record the handler writes.

    On the handler, not the root logger: a logger's filters see only the records logged on that logger,
    not those its children pass up.
    """

    def __init__(self, worker: str = "-") -> None:
        super().__init__()
        self.host = socket.gethostname()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.host = self.host
        # The pid of the process that made the record: a pool child forked after the set-up has its own.
        record.pid = record.process if record.process is not None else os.getpid()
        record.worker = self.worker
        return True


PROCESS = ProcessFields()


def set_worker_name(name: str) -> None:
    """The `worker` field from now on in this process and the children it forks (a Celery node name)."""
    PROCESS.worker = name


# ---- Celery's lines on a task's end -----------------------------------------------------------------------

SUCCESS_WITHOUT_RESULT = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
DEAD_WITHOUT_ERROR = "Task %(name)s[%(id)s] ended as a dead letter"


class CeleryTraceFilter(logging.Filter):
    """Celery's "Task mail.send[id] succeeded in 0.05s: {result}" and "... raised expected:
    DeadLettered(...)" (tasks/outcomes.py): cut the result or error, and down to DEBUG.

    Both may name the recipient (`accepted`, a refusal quoting the address), personal data; and the
    attempt line of mailworker.delivery already says the job was sent or dead-lettered, with what
    matters. The logger's level check is done by then, so this filter drops the record itself unless
    DEBUG is on. A task that raised unexpectedly keeps its line (ERROR, with the traceback).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == LOG_SUCCESS:
            record.msg = SUCCESS_WITHOUT_RESULT
        elif record.msg == LOG_FAILURE.strip() and _described(record) == "raised expected":
            record.msg = DEAD_WITHOUT_ERROR
            record.exc_info = record.exc_text = None
        else:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _described(record: logging.LogRecord) -> Any:
    return record.args.get("description") if isinstance(record.args, dict) else None


CELERY_TRACE_FILTER = CeleryTraceFilter()


# ---- set-up ----------------------------------------------------------------------------------------------

_handler: logging.StreamHandler[Any] | None = None


def configure_logging(
    settings: ServiceSettings, *, worker: str | None = None, whole_process: bool = False
) -> None:
    """Our handler on the root logger, with our format and fields; safe to call again (Celery does).

    `worker` names the process (the `worker` field); `whole_process`, for a long-running command's own
    process: uncaught exceptions are logged, and with JSON whatever else it writes on stdout and stderr
    too (worker/log_output.py), so that every line is a record.
    """
    global _handler
    if worker is not None:
        set_worker_name(worker)
    handler = logging.StreamHandler(beneath(sys.stderr))
    handler.addFilter(PROCESS)
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
    # billiard's logger (a pool child killed: "Process ... exited with ...") does not propagate, and
    # without a handler of its own its records would go out raw through logging.lastResort. ERROR, as
    # Celery sets it: below that it reports every pool process's start and end.
    pool_log = logging.getLogger("multiprocessing")
    pool_log.handlers[:] = [handler]
    pool_log.setLevel(logging.ERROR)
    logging.getLogger("celery.app.trace").addFilter(CELERY_TRACE_FILTER)
    logging.captureWarnings(True)
    _handler = handler
    if whole_process:
        take_over_output(settings.log_format)


def say(message: str, _stream: Any = None) -> None:
    """Celery's `safe_say` (celery.apps.worker: "worker: Warm shutdown (MainProcess)") as a record.

    Called from a signal handler, like Celery's own: written with one os.write, unbuffered, so that it
    cannot re-enter a buffered stream the interrupted code was writing to.
    """
    handler = _handler
    if handler is None or not logging.getLogger("celery.apps.worker").isEnabledFor(logging.INFO):
        return
    record = logging.LogRecord("celery.apps.worker", logging.INFO, __file__, 0, message.strip(), None, None)
    if handler.filter(record):
        line = handler.format(record) + "\n"
        # A notice lost, as with Celery's own, is never a reason for the shutdown to fail.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(handler.stream.fileno(), line.encode("utf-8", "backslashreplace"))


# ---- delivery attempts -----------------------------------------------------------------------------------

# The local part of an e-mail address: an SMTP reply quotes the recipient it refuses ("alice@example.com:
# 451 try again"), and a retry's line is at INFO. The domain stays: it tells which provider refuses.
_LOCAL_PART = re.compile(r"[^\s<>()\[\]{}:;,\"'@]+@(?=\[|[^\s@<>()\[\]{}:;,\"'])")


def without_addresses(text: str) -> str:
    """`text` with the local part of every e-mail address in it masked: ***@example.com."""
    return _LOCAL_PART.sub("***@", text)


# The attempt outcomes that mean every mail of a realm is failing, or a bug: what operators alert on.
ERROR_OUTCOMES = frozenset({"dead:settings", "dead:internal"})


def level_for(outcome: str) -> int:
    """The level of an attempt's line: see "Levels" in the module's docstring."""
    if outcome in ERROR_OUTCOMES:
        return logging.ERROR
    if outcome.startswith("dead:"):
        return logging.WARNING
    return logging.INFO


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
    delivery_log.log(
        level_for(outcome),
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
            # The dead letter and `mailworker status` keep the error whole, the address included.
            **({"error": without_addresses(error)} if error else {}),
        },
    )
