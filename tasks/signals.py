"""Worker process setup: fresh connections after fork, logging as configured."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from worker.logs import configure_logging
from worker.runtime import reset, runtime


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    configure_logging(runtime().settings)


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    # Sockets inherited through fork would be shared by two processes: start clean in every child.
    reset()


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    runtime().close()
