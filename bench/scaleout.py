"""The scale-out phase: 1, 2 and 4 worker groups (hosts, in miniature) draining one Redis.

Each group is a `mailworker worker --queues transactional` process group of its own, with its own node
name (`tx@bench-host<i>`), standing in for one host. For each group count the queue is filled first with
N e-mail verifications (no worker running, so the producer's pace does not limit the figure), then the
groups start; throughput is counted between 10% and 90% of the messages at the sink (the groups' start-up
and the tail left out), and Redis's CPU (`INFO cpu`, used_cpu_sys + used_cpu_user) and its commands per
second over that same window. On one machine the groups share its cores with Redis and the sink, so the
curve bends where the machine is full, not where Redis is: the figures say how much of a core Redis took.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import redis

from bench.costrun import worker_argv
from bench.harness import OWN, BenchRedis, Workers, log, own_tree, ping_workers
from bench.sink import Sink
from bench.workload import CONTEXT, TEMPLATE

SCALE_REALM = "bench-scale"
GROUPS = (1, 2, 4)


def _redis_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _calls(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")


def _one_run(
    args: argparse.Namespace, groups: int, sink: Sink, client: redis.Redis, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    from tasks import api
    from worker.app import app

    n = args.scale_messages
    base = sink.count()
    for i in range(n):
        api.send_email(SCALE_REALM, TEMPLATE, f"scale-{groups}-{i}@example.com", context=CONTEXT)
    started = time.monotonic()
    hosts = []
    for i in range(1, groups + 1):
        argv = worker_argv(
            args, f"tx@bench-host{i}", queues="transactional", concurrency=args.scale_concurrency
        )
        hosts.append(Workers(argv, env, log_dir / f"scale-{groups}-host{i}.log").start())
        OWN.append(own_tree(hosts[-1]))
    try:
        low, high = base + n // 10, base + (n * 9) // 10
        first: tuple[float, int, float, int] | None = None
        last: tuple[float, int, float, int] | None = None
        while time.monotonic() - started < args.bulk_max_seconds:
            count = sink.count()
            if first is None and count >= low:
                first = (time.monotonic(), count, _redis_cpu(client), _calls(client))
            if count >= high:
                last = (time.monotonic(), count, _redis_cpu(client), _calls(client))
                break
            time.sleep(0.02)
        if first is None or last is None:
            raise RuntimeError(f"{groups} group(s): only {sink.count() - base} of {n} arrived")
        seconds = last[0] - first[0]
        ping_workers(app, groups, 30)  # every group really ran (a duplicate name would hide one)
        result = {
            "groups": groups,
            "processes_per_group": args.scale_concurrency,
            "messages": n,
            "rate": round((last[1] - first[1]) / seconds, 1),
            "redis_cpu_share": round((last[2] - first[2]) / seconds, 3),
            "redis_commands_per_s": round((last[3] - first[3]) / seconds),
            "seconds": round(seconds, 3),
        }
        log(f"scale-out: {groups} group(s): {result['rate']} msg/s, Redis CPU {result['redis_cpu_share']:.0%} "
            f"of a core, {result['redis_commands_per_s']} commands/s")  # fmt: skip
        deadline = time.monotonic() + 120
        while sink.count() < base + n and time.monotonic() < deadline:
            time.sleep(0.05)
        return result
    finally:
        for host in hosts:
            host.stop()


def phase_scale_out(
    args: argparse.Namespace, sink: Sink, redis_server: BenchRedis, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    os.environ.update({k: v for k, v in env.items() if k.startswith("MAILWORKER_")})
    from worker.runtime import runtime

    runtime().store.save(SCALE_REALM, {"from": "noreply@bench.example", "host": sink.host, "port": sink.port})
    client = redis.Redis.from_url(redis_server.url_for(0))
    runs = [_one_run(args, groups, sink, client, env, log_dir) for groups in GROUPS]
    one = runs[0]["rate"]
    for run in runs:
        run["speedup"] = round(run["rate"] / one, 2) if one else None
    return {"runs": runs, "cores": os.cpu_count()}
