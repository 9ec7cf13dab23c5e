"""Worker process setup: fresh connections after fork, logging as configured."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from config.names import BULK, TRANSACTIONAL
from worker.bulk.progress import BULK_JOB_PREFIX
from worker.jobs.lost import EntryKinds
from worker.liveness.heartbeat import process_gone
from worker.logs import configure_logging, say
from worker.runtime import reset, runtime

log = logging.getLogger(__name__)


@celeryd_init.connect
def _configure_the_worker_process(sender: str, instance: Any, **_: Any) -> None:
    """A worker program (`mailworker worker`, `celery worker`) starting: log as configured from here on.

    celeryd_init comes before anything the worker says: Celery's own logging set-up (setup_logging,
    below) comes after its privilege check warns, and after the banner would be printed. Pool children
    fork from this process and keep all of it.
    """
    settings = runtime().settings
    configure_logging(settings, worker=sender, whole_process=True)
    import celery.apps.worker

    # Celery's shutdown notices are printed, not logged ("worker: Warm shutdown (MainProcess)").
    celery.apps.worker.safe_say = say
    if settings.log_format == "json":
        instance.quiet = True  # the banner: twenty lines of ASCII art; _said_starting says what it says


@celeryd_after_setup.connect
def _said_starting(sender: str, instance: Any, **_: Any) -> None:
    if not getattr(instance, "quiet", False):
        return  # the banner said it
    pool = instance.pool_cls if isinstance(instance.pool_cls, str) else instance.pool_cls.__module__
    log.info(
        "worker %s starting: queues %s, concurrency %s (%s)", sender,
        ",".join(sorted(instance.app.amqp.queues.consume_from)), instance.concurrency, pool.split(".")[-1],
    )  # fmt: skip


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


@worker_ready.connect
def _warn_if_redis_keeps_nothing(**_: Any) -> None:
    """A Redis without persistence loses every queued job and realm setting on restart: say so at start."""
    from config.redis import persistence

    try:
        keeps, what = persistence(runtime().redis)
    except Exception as error:  # a check that fails must not stop the worker
        log.warning("could not read the store's persistence settings: %s", error)
        return
    if keeps is False:
        log.warning("the store's Redis %s", what)


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """In the worker's main process: publish again the jobs the broker lost (worker/jobs/pending.py), and
    within seconds those a dead consumer popped and never recorded (worker/jobs/lost.py)."""
    threading.Thread(target=_sweep_forever, name="mailworker-sweeper", daemon=True).start()


def _sweep_forever() -> None:
    from worker.app import app

    owner = f"{socket.gethostname()}:{os.getpid()}"
    try:
        runtime().services.cache.check_epoch()  # remember the store's epoch now: a later wipe is noticed
    except Exception:  # Redis restarting: the next round looks again
        log.warning("could not read the store's epoch", exc_info=True)
    last_sweep = time.monotonic()
    while True:
        settings = runtime().settings
        time.sleep(settings.heartbeat_interval)
        try:
            check_lost_once(app, owner)
            if time.monotonic() - last_sweep >= settings.sweep_interval:
                last_sweep = time.monotonic()
                # An idle worker notices a wiped store too (not only when a job makes it read settings).
                runtime().services.cache.check_epoch()
                sweep_once(app, owner, settings.sweep_interval)
        except Exception:  # a Redis outage or a bug: log it, keep sweeping
            log.exception("sweeping for lost jobs failed")


def _publisher(app: Any) -> Callable[[str, list[Any], str | None, str, int], None]:
    def publish(task: str, args: list[Any], task_id: str | None, queue: str, lane: int) -> None:
        app.send_task(task, args=args, task_id=task_id, queue=queue, priority=lane)

    return publish


def _ended(entry_id: str) -> bool:
    """Has the pending entry's job (or bulk fan-out, or chunk) ended: sent, dead-lettered, dropped?"""
    rt = runtime()
    if entry_id.startswith(BULK_JOB_PREFIX):
        return rt.bulk_jobs.entry_ended(entry_id)
    return rt.ledger.state(entry_id) is not None or bool(rt.redis.exists(rt.keys.dead_letter(entry_id)))


def _claim_key(entry_id: str) -> str | None:
    """The claim a worker holds while it works on the entry: a job's, a chunk's; a fan-out has none."""
    keys = runtime().keys
    if not entry_id.startswith(BULK_JOB_PREFIX):
        return keys.claim(entry_id)
    job_id, _, chunk = entry_id.partition(":")
    return keys.bulk_chunk_claim(job_id, int(chunk)) if chunk.isdigit() else None


ENTRY_KINDS = EntryKinds(
    queue=lambda entry_id: BULK if entry_id.startswith(BULK_JOB_PREFIX) else TRANSACTIONAL,
    claim_key=_claim_key,
    process_gone=process_gone,
)


def check_lost_once(app: Any, owner: str) -> list[str]:
    lost = runtime().lost_messages
    if lost is None or not lost.claim_round(owner):
        return []  # not a Redis broker, or another worker checks this round
    return lost.check(ENTRY_KINDS, _publisher(app))


def sweep_once(app: Any, owner: str, interval: float) -> list[str]:
    rt = runtime()
    if not rt.pending.claim_sweep(owner, interval):
        return []  # another worker sweeps this round
    return rt.pending.sweep(_publisher(app), _ended)
