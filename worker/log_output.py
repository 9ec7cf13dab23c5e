"""What a process writes without logging, made records too: with MAILWORKER_LOG_FORMAT=json every line on
stdout and stderr is one JSON object (worker/logs.py says the format).

A library's print, Python's own reports on stderr ("Exception ignored in ..."), an uncaught exception in
the main thread or another: each becomes a record of `mailworker.stdout` (INFO), `mailworker.stderr`
(ERROR) or `mailworker` (CRITICAL), so a pipeline reading the stream never meets a line it cannot parse.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from types import TracebackType
from typing import Any


class LinesToLog(io.TextIOBase):
    """A stand-in for sys.stdout or sys.stderr (JSON format): each line written becomes a record.

    With JSON, a line that is not an object breaks the reader of the stream; a library's print or
    Python's own reports on stderr ("Exception ignored in ...") are such lines.
    """

    # A line that never ends is cut here rather than held in memory.
    LONGEST = 64 * 1024

    def __init__(self, stream: Any, logger: str, level: int) -> None:
        super().__init__()
        self.stream = stream
        self.logger = logging.getLogger(logger)
        self.level = level
        self._pending = ""
        # Reentrant: a signal handler may print while the main thread is inside write().
        self._lock = threading.RLock()
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.stream.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", None) or "utf-8")

    def write(self, text: str) -> int:
        if getattr(self._local, "logging", False):
            # The handler itself failed and reports it on stderr (logging.Handler.handleError): logging
            # that would fail again, and again.
            self.stream.write(text)
            return len(text)
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            if len(self._pending) > self.LONGEST:
                lines.append(self._pending)
                self._pending = ""
        self._log(lines)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._pending = self._pending, ""
        self._log([rest])

    def _log(self, lines: list[str]) -> None:
        self._local.logging = True
        try:
            for line in lines:
                if line.strip():
                    self.logger.log(self.level, "%s", line)
        finally:
            self._local.logging = False


def beneath(stream: Any) -> Any:
    """The real stream under a LinesToLog: where the handler writes (writing to the stand-in would loop)."""
    return stream.stream if isinstance(stream, LinesToLog) else stream


def log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("mailworker").critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))


def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # what threading's own hook ignores too
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("mailworker").critical(
        "uncaught %s in thread %s", args.exc_type.__name__, name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )  # fmt: skip


def take_over_output(log_format: str) -> None:
    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
    if log_format != "json":
        return  # a text reader takes any line; the CLI's own error lines stay as they are
    if not isinstance(sys.stdout, LinesToLog):
        sys.stdout = LinesToLog(sys.stdout, "mailworker.stdout", logging.INFO)
    if not isinstance(sys.stderr, LinesToLog):
        sys.stderr = LinesToLog(sys.stderr, "mailworker.stderr", logging.ERROR)
