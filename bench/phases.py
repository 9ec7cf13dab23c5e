"""The measured phases: the two baselines and the service, each started, measured and stopped here.

- `phase_ceiling`: prebuilt messages on persistent smtplib connections (bench/ceiling.py).
- `phase_naive`: one Celery task per message, a new connection each (bench/naive.py).
- `phase_service`: `mailworker worker` processes; idle latency, the bursts, the large bulk and memory,
  each bulk run by `run_bulk` with the loads of bench/loads.py alongside.

A phase returns (or fills) plain dicts of samples and counts; bench/figures.py turns them into figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.figures import pooled_bursts, rate_by_fraction, thin
from bench.harness import (
    OWN,
    VENV_BIN,
    BenchRedis,
    LoadMeter,
    Memory,
    Workers,
    log,
    own_pids,
    own_tree,
    ping_workers,
)
from bench.loads import ConnectionTests, MemorySampler, TransactionalLoad
from bench.sink import AioSink, CSink, Sink, find_smtp_sink
from bench.workload import (
    BULK_REALM,
    CONTEXT,
    TEMPLATE,
    TX_REALM,
    TX_TEMPLATE,
    prebuilt_messages,
    save_realms,
    slug,
)


def open_sinks(args: argparse.Namespace, log_dir: Path) -> tuple[Sink, AioSink, dict[str, Any]]:
    """(bulk sink, latency sink, description for the report)."""
    note = ""
    bulk: Sink | None = None
    if args.sink in ("auto", "smtp-sink"):
        binary, note = find_smtp_sink(fetch=not args.no_fetch)
        if binary:
            bulk = CSink(binary=binary, log_dir=log_dir).start()
        elif args.sink == "smtp-sink":
            raise SystemExit(f"error: --sink smtp-sink but {note}")
    if bulk is None:
        bulk = AioSink(log_dir=log_dir, processes=os.cpu_count() or 1, name="bulk").start()
        note = (note + "; " if note else "") + f"fallback: {bulk.processes} aiosmtpd process(es) on one port"
    latency = AioSink(log_dir=log_dir, processes=1, name="latency").start()
    info = {"bulk": bulk.kind, "bulk_port": bulk.port, "latency": latency.kind, "note": note}
    log(f"sinks: bulk -> {bulk.describe()} ({note}); transactional -> {latency.describe()}")
    return bulk, latency, info


# ---- baselines -------------------------------------------------------------------------------------------


def phase_ceiling(args: argparse.Namespace, sink: Sink) -> dict[str, Any]:
    from bench.ceiling import run_ceiling

    n = args.ceiling_messages
    messages = prebuilt_messages(n)
    before = sink.count()
    log(f"ceiling: {n} prebuilt messages ({len(messages[0][2])} bytes each), {args.processes} processes")
    load = LoadMeter(own_pids).start()
    result = run_ceiling(sink.host, sink.port, messages, args.processes)
    result["cpu"] = load.stop()
    result["sink_counted"] = sink.count() - before
    result["message_bytes"] = len(messages[0][2])
    log(f"ceiling: {result['rate']:.0f} messages/s {result['per_process_rates']}")
    return result


def wait_for_count(
    sink: Sink,
    target: int,
    started: float,
    stall_s: float,
    deadline_s: float,
    timeline: list[tuple[float, int]] | None = None,
) -> tuple[float, int]:
    """Poll the sink until it counted `target`: (monotonic time reached, count).

    Gives up after `stall_s` without a new message or `deadline_s` in all: then (time of the last arrival,
    count), so a rate over what arrived stays a rate over the time it took.
    """
    last, last_change = sink.count(), time.monotonic()
    next_sample = 0.0
    while True:
        now = time.monotonic()
        count = sink.count()
        if timeline is not None and (now >= next_sample or count >= target):
            timeline.append((round(now - started, 3), count))
            next_sample = now + 0.25
        if count >= target:
            return now, count
        if count != last:
            last, last_change = count, now
        if now - last_change > stall_s or now - started > deadline_s:
            return last_change, count  # the last message that did arrive
        time.sleep(0.005)


def phase_naive(
    args: argparse.Namespace, sink: Sink, redis: BenchRedis, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    os.environ["BENCH_NAIVE_BROKER"] = redis.url_for(1)
    from bench import naive

    naive.app.conf.broker_url = redis.url_for(1)
    worker_env = {
        **env,
        "BENCH_NAIVE_BROKER": redis.url_for(1),
        "BENCH_SMTP_HOST": sink.host,
        "BENCH_SMTP_PORT": str(sink.port),
    }
    workers = Workers(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "bench.naive",
            "worker",
            "-Q",
            naive.QUEUE,
            "-c",
            str(args.processes),
            "-n",
            "naive@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        worker_env,
        log_dir / "naive-worker.log",
    ).start()
    OWN.append(own_tree(workers))
    try:
        ping_workers(naive.app, 1, 60)
        load = LoadMeter(own_pids).start()
        n = args.naive_messages
        base = sink.count()
        log(f"naive: enqueueing {n} tasks (one per message), {args.processes} worker processes")
        started = time.monotonic()
        for i in range(n):
            naive.send_email.delay(f"user{i}@example.com", TEMPLATE, CONTEXT)
        enqueued = time.monotonic() - started
        reached, count = wait_for_count(
            sink, base + n, started, stall_s=60, deadline_s=args.naive_max_seconds
        )
        done = count - base
        seconds = reached - started
        result = {
            "messages_enqueued": n,
            "messages": done,
            "complete": done >= n,
            "seconds": round(seconds, 3),
            "enqueue_seconds": round(enqueued, 3),
            "rate": round(done / seconds, 1) if seconds > 0 else None,
            "processes": args.processes,
            "cpu": load.stop(),
        }
        if done < n:
            log(
                f"naive: stopped after {seconds:.0f}s with {done} of {n} delivered; the rate is over those {done}"
            )
        log(f"naive: {result['rate']} messages/s ({done} messages in {seconds:.1f}s)")
        return result
    finally:
        workers.stop()
        import redis as redis_lib

        redis_lib.Redis.from_url(redis.url_for(1)).flushdb()  # what a stopped naive run left queued


# ---- service ---------------------------------------------------------------------------------------------


def phase_service(
    args: argparse.Namespace,
    sink: Sink,
    latency_sink: AioSink,
    env: dict[str, str],
    log_dir: Path,
    out: dict[str, Any],
) -> None:
    """Fills `out` as it goes: what was measured before a failure is kept."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("MAILWORKER_")})
    from worker.app import app

    save_realms(sink, latency_sink)
    argv = [
        str(VENV_BIN / "mailworker"),
        "worker",
        "--concurrency",
        str(args.concurrency),
        "--bulk-concurrency",
        str(args.bulk_concurrency),
        "--loglevel",
        "WARNING",
    ]
    workers = Workers(argv, env, log_dir / "service-worker.log").start()
    OWN.append(own_tree(workers))
    out["workers"] = {
        "argv": argv[1:],
        "concurrency": args.concurrency,
        "bulk_concurrency": args.bulk_concurrency,
    }
    try:
        out["workers"]["nodes"] = ping_workers(app, 2, 90)
        out["memory_start"] = _mem(workers.memory())
        # Warm up: every worker process imports, connects and renders once before anything is timed.
        from tasks import api

        warm = [
            api.send_email(TX_REALM, TX_TEMPLATE, f"warm-{i}@example.com", context=CONTEXT) for i in range(8)
        ]
        for job_id in warm:
            api.wait_for_result(job_id, timeout=60)

        log(
            f"idle: transactional at {args.latency_rate}/s for {args.idle_seconds:g}s, Test Connection alongside"
        )
        tx = TransactionalLoad(args.latency_rate, "idle")
        probes = ConnectionTests(BULK_REALM, pause=1.0)
        tx.start()
        probes.start()
        time.sleep(args.idle_seconds)
        tx.stop()
        probes.stop()
        out["idle"] = {"latency": tx.results(latency_sink), "test_connection": probes.summary()}
        log(
            f"idle: transactional p50 {out['idle']['latency']['p50_ms']} ms p99 {out['idle']['latency']['p99_ms']} ms "
            f"(n={out['idle']['latency']['n']}); Test Connection max {out['idle']['test_connection']['max_s']} s"
        )

        bulk = bulk_api()
        if bulk is None:
            out["bulk_missing"] = "tasks.api.send_bulk does not exist (yet): bulk phases skipped"
            log(out["bulk_missing"])
            return
        if not args.skip_warm_bulk:
            warm_bulk = run_bulk(bulk, args, sink, latency_sink, min(2000, args.messages), "warmup", workers)
            out["warmup_bulk"] = {k: warm_bulk[k] for k in ("messages", "delivered", "seconds", "rate")}
        bursts = out["bursts"] = []
        for number in range(1, args.bursts + 1):
            bursts.append(run_bulk(bulk, args, sink, latency_sink, args.messages, f"burst {number}", workers))
            out["burst"] = pooled_bursts(bursts)
            time.sleep(1.0)
            if number == 1:
                out["memory_after_burst"] = _mem(workers.memory())
        if args.rss_messages:
            out["bulk_large"] = run_bulk(bulk, args, sink, latency_sink, args.rss_messages, "large", workers)
            time.sleep(1.0)
            out["memory_after_large"] = _mem(workers.memory())
        out["workers"]["alive_at_end"] = workers.running()
        for run in bursts:  # their samples are in the pooled "burst" figures
            run["latency"].pop("samples_ms", None)
            run["test_connection"].pop("samples_s", None)
    finally:
        workers.stop()
        if workers.process and workers.process.returncode not in (0, None, 143, -15):
            log(f"service workers exited with {workers.process.returncode}; log tail:\n{workers.log_tail()}")


def bulk_api() -> Any:
    from tasks import api

    return api if hasattr(api, "send_bulk") else None


def run_bulk(
    api: Any, args: argparse.Namespace, sink: Sink, latency_sink: AioSink, n: int, tag: str, workers: Workers
) -> dict[str, Any]:
    """One send_bulk of n recipients with transactional load and Test Connection alongside."""
    recipients = [{"email": f"bulk-{slug(tag)}-{i}@example.com"} for i in range(n)]
    base = sink.count()
    tx = TransactionalLoad(args.latency_rate, tag)
    probes = ConnectionTests(BULK_REALM)
    sampler = MemorySampler(workers)
    log(
        f"{tag}: send_bulk of {n} recipients; transactional at {args.latency_rate}/s and Test Connection alongside"
    )
    timeline: list[tuple[float, int]] = []
    load = LoadMeter(own_pids).start()
    started = time.monotonic()
    tx.start()
    sampler.start()
    try:
        job_id = api.send_bulk(BULK_REALM, TEMPLATE, recipients, context=CONTEXT)
        enqueued = time.monotonic() - started
        probes.start()
        # The clock stops when the sink has counted the n-th message (polled every 5 ms).
        while True:
            reached, count = wait_for_count(
                sink, base + n, started, args.stall_seconds, args.bulk_max_seconds, timeline
            )
            if count >= base + n or time.monotonic() - started >= args.bulk_max_seconds:
                break
            # Stalled: keep waiting only while the service still counts the job as running (retries).
            if api.bulk_progress(job_id).get("state") not in ("loading", "queued", "running"):
                break
    finally:
        tx.stop()
        if probes.is_alive():
            probes.stop()
        sampler.stop()
    cpu = load.stop()
    seconds = reached - started
    done = count - base
    progress = _progress(api, job_id)
    if done < n:
        log(f"{tag}: only {done} of {n} reached the sink; progress {progress}; cancelling")
        with contextlib.suppress(Exception):
            api.cancel_bulk(job_id)
    result: dict[str, Any] = {
        "messages": n,
        "delivered": done,
        "complete": done >= n,
        "seconds": round(seconds, 3),
        "send_bulk_call_seconds": round(enqueued, 3),
        "rate": round(done / seconds, 1) if seconds > 0 else None,
        "progress": progress,
        "latency": tx.results(latency_sink),
        "test_connection": probes.summary(),
        "peak_rss_mib": sampler.peak.rss_mib,
        "cpu": cpu,
        "rate_by_fifth": rate_by_fraction([(t, c - base) for t, c in timeline], n, 5),
        "timeline": thin([(t, c - base) for t, c in timeline], 80),
    }
    log(
        f"{tag}: {result['rate']} messages/s ({done} in {seconds:.2f}s; send_bulk returned after {enqueued:.2f}s); "
        f"transactional p50 {result['latency']['p50_ms']} ms p99 {result['latency']['p99_ms']} ms "
        f"(n={result['latency']['n']}); Test Connection max {result['test_connection']['max_s']} s "
        f"(n={result['test_connection']['n']}); rate by fifth {result['rate_by_fifth']}; CPU {cpu}"
    )
    return result


def _progress(api: Any, job_id: str) -> dict[str, Any]:
    # The final counters may trail the sink by a moment (a chunk records after its last reply).
    deadline = time.monotonic() + 10
    progress: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            progress = dict(api.bulk_progress(job_id))
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}
        if progress.get("pending") in (0, None) and progress.get("state") not in (
            "loading",
            "queued",
            "running",
        ):
            break
        time.sleep(0.2)
    return {k: v for k, v in progress.items() if isinstance(v, int | float | str | bool | None)}


def _mem(memory: Memory) -> dict[str, Any]:
    return {
        "per_process_rss_mib": [[pid, name, round(kib / 1024, 1)] for pid, name, kib in memory.per_process],
        "rss_mib": memory.rss_mib,
        "pss_mib": memory.pss_mib,
        "rss_kib": memory.rss_kib,
        "processes": memory.processes,
    }
