"""`mailworker health`: exit 0 when the deployment can send, 1 with a line saying what is wrong.

What it checks, in order, one line each (`ok`, `warn` or `FAIL`):

- store:       the config store's Redis answers;
- settings:    the store holds its epoch (config/epoch.py): without it every realm's settings are gone
               (Redis lost its data, or nothing was saved yet); a wipe a worker noticed is named;
- secrets:     MAILWORKER_SECRET_KEY opens the stored secrets (warn when this shell has no key);
- persistence: whether that Redis keeps anything on disk (warn only: a restart would lose queued mail);
- memory:      how full it is: FAIL from 95% of maxmemory (at 100% Redis refuses every write: no mail is
               enqueued, no result written), warn from 80%, and warn when its policy evicts keys (queued
               mail and settings would vanish); the broker's Redis too when it is another one;
- broker:      the broker's Redis answers;
- workers:     every queue has a live consumer (heartbeat within one lease, worker/liveness/heartbeat.py), or
               with --node, each named worker is alive.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

OK, WARN, FAIL = "ok", "warn", "FAIL"
Check = tuple[str, str]  # (OK | WARN | FAIL, line)


def register(subparsers: Any) -> None:
    health = subparsers.add_parser(
        "health",
        help="probe: exit 0 when Redis (store, broker), the settings and the workers are fine, else 1",
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per check (default 2)")
    health.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="only these workers count, e.g. transactional@$HOSTNAME (repeatable; default: every queue served)",
    )
    health.set_defaults(handler=run_health)


def settings_check(store: Any) -> Check:
    epoch = store.epoch()
    wipe = store.wipe()
    if epoch is None:
        from config.epoch import store_empty_error

        return FAIL, f"settings {store_empty_error(wipe)}"
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch.created_at))
    if wipe is not None:
        noticed = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(wipe.get("noticed_at") or 0)))
        return WARN, (
            f"settings stored since {created}; the store was wiped before ({noticed}, noticed by "
            f"{wipe.get('noticed_by')}): mail queued then was lost"
        )
    return OK, f"settings stored since {created} ({len(store.realms())} realm(s))"


# Shares of maxmemory from which `memory` warns, and fails (Redis refuses writes at 100%: fail before).
MEMORY_WARN, MEMORY_FAIL = 0.80, 0.95


def memory_check(what: str, used: int, maximum: int, policy: str) -> Check:
    """How full a Redis is, and whether it would delete keys when full."""
    mib = f"{used / 2**20:.1f} MiB"
    if maximum <= 0:
        return OK, f"{what} {mib} used (no maxmemory: it grows until the machine runs out)"
    share = used / maximum
    text = f"{what} {mib} of {maximum / 2**20:.0f} MiB ({share:.0%}), policy {policy}"
    if share >= MEMORY_FAIL:
        full = "full: it refuses every write" if share >= 1 else "nearly full"
        return FAIL, f"{text}: {full}; free space or raise maxmemory (docs/runbook.md#redis-is-full)"
    if policy != "noeviction":
        return (
            WARN,
            f"{text}: when full it deletes keys (queued mail, settings); set maxmemory-policy noeviction",
        )
    if share >= MEMORY_WARN:
        return WARN, f"{text}: filling up (docs/runbook.md#redis-is-full)"
    return OK, text


def secrets_check(settings: Any, store: Any) -> Check:
    """Does MAILWORKER_SECRET_KEY (as this shell has it) open the stored secrets?"""
    from config.errors import ConfigError

    if settings.secret_key is None and not getattr(settings, "secret_key_file", None):
        return WARN, "secrets MAILWORKER_SECRET_KEY is not set here: not checked (workers need it)"
    try:
        check = store.check_key()
    except ConfigError as error:
        return FAIL, f"secrets {error}"
    problem = check.problem()
    if problem is not None:
        return FAIL, f"secrets {problem}"
    if not check.opened:
        return OK, "secrets the key is usable (no realm stores a secret yet)"
    return OK, f"secrets the key opens the saved secrets of {len(check.opened)} realm(s)"


def workers_check(registry: Any, nodes: Sequence[str]) -> list[Check]:
    from worker.app import QUEUES

    live, lapsed = registry.all()
    if nodes:
        found = {w.name for w in live}
        missing = [n for n in nodes if n not in found]
        if missing:
            return [(FAIL, f"workers: {', '.join(missing)} not alive (no heartbeat within the lease; "
                           "is `mailworker worker` running?)")]  # fmt: skip
        return [(OK, f"workers {', '.join(nodes)} alive")]
    checks: list[Check] = []
    for queue in QUEUES:
        serving = sorted({w.name for w in live if queue in w.queues})
        if serving:
            checks.append((OK, f"queue   {queue}: {', '.join(serving)}"))
        else:
            from worker.liveness.heartbeat import no_worker_message

            checks.append((FAIL, f"queue   {no_worker_message(queue, lapsed)}"))
    return checks


def check_health(timeout: float, nodes: Sequence[str] = ()) -> list[Check]:
    import redis

    from config.errors import ConfigError
    from config.redis import connect, memory, persistence, redact_url, redact_urls_in
    from worker.runtime import runtime

    rt = runtime()
    settings = rt.settings
    checks: list[Check] = []
    started = time.monotonic()
    try:
        client = connect(settings.store_url, check=False, sentinel=settings.sentinel)
        client.connection_pool.connection_kwargs.update(
            socket_timeout=timeout, socket_connect_timeout=timeout
        )
        client.ping()
        checks.append((OK, f"store   {redact_url(settings.store_url)} answers ({_ms(started)})"))
        checks.append(settings_check(rt.store))
        checks.append(secrets_check(settings, rt.store))
        keeps, what = persistence(client)  # config/redis.py
        checks.append((OK if keeps else WARN, f"persistence {what}"))
        use = memory(client)
        checks.append(memory_check("memory ", use.used, use.maximum, use.policy))
        store_ok = True
    except (redis.RedisError, OSError) as error:
        reason = redact_urls_in(str(error), settings.store_url)
        checks.append(
            (FAIL, f"store   {redact_url(settings.store_url)}: {reason} (check MAILWORKER_STORE_URL)")
        )
        store_ok = False
    except ConfigError as error:  # not a Redis URL: connect() says why, credentials masked
        checks.append((FAIL, f"store   {error}"))
        store_ok = False

    started = time.monotonic()
    try:
        from tasks.stats import broker_connection

        with broker_connection(settings, timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            conn.default_channel.client.ping()
            checks.append((OK, f"broker  {redact_url(settings.broker_url)} answers ({_ms(started)})"))
            if settings.broker_url != settings.store_url:
                use = memory(conn.default_channel.client)
                checks.append(memory_check("broker memory", use.used, use.maximum, use.policy))
    except Exception as error:  # kombu wraps every transport error differently
        reason = redact_urls_in(str(error), settings.broker_url)
        checks.append(
            (FAIL, f"broker  {redact_url(settings.broker_url)}: {reason} (check MAILWORKER_BROKER_URL)")
        )
    if store_ok:
        checks += workers_check(rt.live_workers, nodes)
    else:
        checks.append((FAIL, "workers not checked: their heartbeats are in the store, which does not answer"))
    return checks


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def run_health(args: argparse.Namespace) -> int:
    from worker.cli.common import shown

    checks = check_health(args.timeout, args.node)
    for status, line in checks:
        print(f"{status:4}  {shown(line)}")  # worker names, wipe notes and errors come from elsewhere
    return 1 if any(status == FAIL for status, _ in checks) else 0
