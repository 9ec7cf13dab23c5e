"""`mailworker worker`: Celery workers on this app.

Without --queues it starts what production needs: one worker for `transactional` + `control`, a separate
one for `bulk`, so a password reset never waits behind a bulk burst (priority isolation), and one for the
delivery webhooks (`callbacks`), so a receiver that hangs holds none of the processes that send mail.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from worker.app import BULK, CALLBACKS, CONTROL, TRANSACTIONAL

DEFAULT_GROUPS = ((f"{TRANSACTIONAL},{CONTROL}", "transactional"), (BULK, "bulk"), (CALLBACKS, "callbacks"))
# Webhook deliveries wait on the network, not the CPU: a few processes serve many receivers, and each
# endpoint is limited to a couple of attempts at once (worker/delivery/webhooks.py).
CALLBACKS_CONCURRENCY = 4
# The bulk and callbacks workers run at a lower CPU priority: during a burst a password reset (and Test
# Connection) gets the CPU first; they take what is left, which on an idle machine is all of it.
BULK_NICENESS = 10

log = logging.getLogger("mailworker.supervisor")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run Celery workers (default: transactional+control, bulk, and callbacks)"
    )
    parser.add_argument("--queues", "-Q", help="comma-separated queues for ONE worker (default: both groups)")
    parser.add_argument("--concurrency", "-c", type=int, help="processes per worker (default: CPU count)")
    parser.add_argument(
        "--bulk-concurrency", type=int, help="processes of the bulk worker (default: CPU count)"
    )
    parser.add_argument(
        "--callbacks-concurrency",
        type=int,
        default=CALLBACKS_CONCURRENCY,
        help=f"processes of the webhooks worker (default: {CALLBACKS_CONCURRENCY})",
    )
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--loglevel", "-l", default=None)
    parser.add_argument("--name", "-n", help="node name (default: <group>@<hostname>)")
    parser.set_defaults(handler=run_worker)


def celery_argv(
    queues: str, name: str, concurrency: int | None, pool: str, loglevel: str | None
) -> list[str]:
    # No -E: task events follow MAILWORKER_TASK_EVENTS (worker/app.py); Flower turns them on when it runs.
    argv = ["worker", "-Q", queues, "-n", name, "--pool", pool, "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if loglevel:
        argv += ["--loglevel", loglevel]
    return argv


def run_worker(args: argparse.Namespace) -> int:
    from celery.utils.nodenames import default_nodename, host_format

    from config.settings import get_settings
    from worker.logs import configure_logging

    name = (args.name or f"{args.queues.split(',')[0]}@%h") if args.queues else ""
    # Configured from the start, not only once Celery sets up its logging: what goes wrong before (the
    # app's import, the broker, the key) is logged in the configured format too.
    configure_logging(
        get_settings(),
        worker=host_format(default_nodename(name)) if name else "supervisor",
        whole_process=True,
    )
    check_the_key()
    if args.queues:
        from worker.app import app

        app.worker_main(celery_argv(args.queues, name, args.concurrency, args.pool, args.loglevel))
        return 0
    return supervise(args)


def check_the_key() -> None:
    """Refuse to start with a MAILWORKER_SECRET_KEY that cannot open the stored secrets.

    A worker started with the wrong key (or none) would take every job of a realm with a password and
    fail it; stopping here, with one line naming the variable, is what the person starting it can act on.
    Raises ConfigError (exit 1) when the key is missing or malformed, or opens none of the saved secrets;
    when it opens some, the worker starts and says (ERROR) which realms it cannot serve. A store that does not answer yet is not a reason to refuse: Celery waits
    for Redis, and each job checks again.
    """
    import redis

    from config.errors import ConfigError
    from worker.runtime import runtime

    try:
        check = runtime().store.check_key()
    except redis.RedisError as error:
        log.warning("MAILWORKER_SECRET_KEY not checked: the config store does not answer (%s)", error)
        return
    problem = check.problem()
    if problem is not None and not check.opened:
        raise ConfigError(problem)  # a wrong key: every stored secret is closed to it
    if problem is not None:
        # Some realms' secrets only (a key lost or missing for them): the others' mail must go on; each
        # job of those realms ends as a dead letter (reason settings) saying what to do.
        log.error("MAILWORKER_SECRET_KEY: %s", problem)
    elif check.opened:
        log.info("MAILWORKER_SECRET_KEY opens the saved secrets of %d realm(s)", len(check.opened))


def child_commands(args: argparse.Namespace) -> list[tuple[list[str], int]]:
    """(command line, niceness) of each worker the default `mailworker worker` starts: one per queue group."""
    commands = []
    for queues, group in DEFAULT_GROUPS:
        concurrency = {"bulk": args.bulk_concurrency, "callbacks": args.callbacks_concurrency}.get(
            group, args.concurrency
        )
        argv = celery_argv(queues, f"{group}@%h", concurrency, args.pool, args.loglevel)
        commands.append(
            (
                [sys.executable, "-m", "celery", "-A", "worker.app", *argv],
                0 if group == "transactional" else BULK_NICENESS,
            )
        )
    return commands


def supervise(args: argparse.Namespace) -> int:
    """Run one Celery worker per queue group as child processes; stop them all when one ends."""
    children = []
    for (queues, group), (command, niceness) in zip(DEFAULT_GROUPS, child_commands(args), strict=True):
        children.append(
            subprocess.Popen(command, preexec_fn=(lambda n=niceness: os.nice(n)) if niceness else None)
        )
        log.info("started the %s worker (queues %s): pid %d", group, queues, children[-1].pid)

    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    said = False
    while all(child.poll() is None for child in children):
        said = said or _say_stopping(stopping)
        time.sleep(0.5)
    if not stopping:
        ended = next(child for child in children if child.poll() is not None)
        log.error("a worker ended (pid %d, exit code %s): stopping the others", ended.pid, ended.returncode)
    elif not said:
        _say_stopping(stopping)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = [child.wait() for child in children]
    code = exit_code(codes, asked_to_stop=bool(stopping))
    log.log(logging.ERROR if code else logging.INFO, "workers stopped: exit code %d", code)
    return code


def _say_stopping(stopping: list[int]) -> bool:
    # Said from the main loop, not from `forward`: a signal handler writing to the stream the interrupted
    # code was writing to can break it.
    if stopping:
        log.info("stopping the workers (%s)", signal.Signals(stopping[0]).name)
    return bool(stopping)


def exit_code(codes: list[int], *, asked_to_stop: bool) -> int:
    """0 when the workers stopped because we were asked to (a service manager's stop is not a failure)."""
    stopped_by_signal = {-signal.SIGTERM, -signal.SIGINT, -signal.SIGQUIT}
    failures = [c for c in codes if c != 0 and not (asked_to_stop and c in stopped_by_signal)]
    if not failures:
        return 0
    code = failures[0]
    return code if code > 0 else 128 - code


if os.name != "posix":  # pragma: no cover
    raise ImportError("mailworker worker needs a POSIX system")
