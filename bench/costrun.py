"""The Redis-cost phase: commands per delivered message on the transactional and the bulk path.

Starts `mailworker worker` on the bench's Redis, warms it up, measures what it issues with nothing to do,
then `INFO commandstats` around (1) N e-mail verifications sent one by one with `api.send_email` and (2)
one `send_bulk` of M recipients, each until the sink counted the last one and one second more (the
result and the ledger's end land after the mail). The producer's commands count: they are part of what a
message costs Redis. Last, MONITOR over a small transactional batch says which keys take the commands.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import redis

from bench.harness import OWN, VENV_BIN, BenchRedis, Workers, log, own_tree, ping_workers, wait_until
from bench.rediscost import KeySample, command_calls, cost
from bench.sink import AioSink, Sink
from bench.workload import BULK_REALM, CONTEXT, TEMPLATE, TX_REALM, save_realms

SETTLE_S = 1.0
IDLE_S = 3.0


def worker_argv(
    args: argparse.Namespace, name: str | None = None, *, queues: str | None = None, concurrency: int = 0
) -> list[str]:
    """`mailworker worker` as the bench starts it; `queues` and `name`: one Celery node of those queues."""
    argv = [str(VENV_BIN / "mailworker"), "worker", "--concurrency", str(concurrency or args.concurrency),
            "--bulk-concurrency", str(args.bulk_concurrency), "--loglevel", "WARNING"]  # fmt: skip
    return argv + (["--queues", queues] if queues else []) + (["--name", name] if name else [])


def _send_and_count(
    client: redis.Redis, sink: Sink, send: Any, n: int, timeout: float, idle_per_s: float
) -> dict[str, Any]:
    base = sink.count()
    before = command_calls(client)
    started = time.monotonic()
    send()
    wait_until(lambda: sink.count() >= base + n, timeout, f"{n} messages at the sink", interval=0.01)
    delivered = time.monotonic()
    time.sleep(SETTLE_S)
    after = command_calls(client)
    seconds = time.monotonic() - started
    out = cost(before, after, sink.count() - base, seconds, idle_per_s)
    out["rate"] = round(n / (delivered - started), 1)
    return out


def phase_redis_cost(
    args: argparse.Namespace, bulk_sink: Sink, tx_sink: AioSink, redis_server: BenchRedis, env: dict[str, str],
    log_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    os.environ.update({k: v for k, v in env.items() if k.startswith("MAILWORKER_")})
    from tasks import api
    from worker.app import app

    save_realms(bulk_sink, tx_sink)
    client = redis.Redis.from_url(redis_server.url_for(0))
    workers = Workers(worker_argv(args), env, log_dir / "cost-worker.log").start()
    OWN.append(own_tree(workers))
    out: dict[str, Any] = {}
    try:
        ping_workers(app, 2, 90)
        warm = [
            api.send_email(TX_REALM, TEMPLATE, f"warm-{i}@example.com", context=CONTEXT) for i in range(20)
        ]
        for job_id in warm:
            api.wait_for_result(job_id, timeout=60)
        time.sleep(SETTLE_S)
        before = command_calls(client)
        time.sleep(IDLE_S)
        idle = sum(v for k, v in cost(before, command_calls(client), 1, IDLE_S)["by_command"].items())
        idle_per_s = idle / IDLE_S
        out["idle_commands_per_s"] = round(idle_per_s, 1)

        n = args.cost_messages

        def transactional() -> None:
            for i in range(n):
                api.send_email(TX_REALM, TEMPLATE, f"cost-{i}@example.com", context=CONTEXT)

        log(f"redis cost: {n} e-mail verifications through api.send_email")
        out["transactional"] = _send_and_count(client, tx_sink, transactional, n, 300, idle_per_s)
        log(f"redis cost: transactional {out['transactional']['per_message']} commands/message "
            f"({_top(out['transactional'])})")  # fmt: skip

        m = args.cost_bulk_messages
        recipients = [{"email": f"cost-bulk-{i}@example.com"} for i in range(m)]
        log(f"redis cost: one send_bulk of {m} recipients")
        out["bulk"] = _send_and_count(
            client, bulk_sink, lambda: api.send_bulk(BULK_REALM, TEMPLATE, recipients, context=CONTEXT), m, 600,
            idle_per_s,
        )  # fmt: skip
        log(f"redis cost: bulk {out['bulk']['per_message']} commands/message ({_top(out['bulk'])})")

        sample_n = 100
        sample = KeySample(redis_server.url_for(0))
        sample.start()
        base = tx_sink.count()
        for i in range(sample_n):
            api.send_email(TX_REALM, TEMPLATE, f"sample-{i}@example.com", context=CONTEXT)
        wait_until(lambda: tx_sink.count() >= base + sample_n, 120, "the sampled batch")
        time.sleep(SETTLE_S)
        sample.stop()
        out["transactional_by_key"] = sample.per_message(sample_n)
        out["transactional_by_key_messages"] = sample_n
    finally:
        workers.stop()
    return out


def _top(figure: dict[str, Any], n: int = 8) -> str:
    return ", ".join(f"{k} {v}" for k, v in list(figure["by_command"].items())[:n])
