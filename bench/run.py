"""`make bench`: throughput, latency, Test Connection and memory of the service, with its baselines, in one run.

    .venv/bin/python bench/run.py            # the full run (20,000-message burst, 100,000 for memory)
    .venv/bin/python bench/run.py --quick    # small N, for development (figures not comparable)

Starts everything it measures and stops it at the end: a redis-server on a free port (no persistence), a
local SMTP sink (Postfix's C smtp-sink, fetched by bench/get-smtp-sink.sh; an aiosmtpd sink when that
fails, reported as such), a second aiosmtpd sink that timestamps transactional arrivals, and real worker
processes (`mailworker worker`, and `celery -A bench.naive worker` for the baseline). Phases, in order:

1. ceiling  - prebuilt messages on persistent smtplib connections, one process per core (bench/ceiling.py)
2. naive    - one Celery task per message, EmailMessage, new connection per message (bench/naive.py)
3. idle     - transactional latency at 10 messages/s with nothing else running; Test Connection round trips
4. bursts   - after a 2,000-recipient warm-up, 3 x send_bulk of 20,000 recipients, each timed from the call
              to the sink counting the 20,000th message (the table: the median); during each, transactional
              latency at 10 messages/s and Test Connection round trips (pooled over the 3)
5. memory   - RSS of the worker process tree after the first burst, then after a 100,000-recipient bulk
              (latency and Test Connection measured during that one too, reported separately)

Prints a table (figure, value, target, pass/fail) and writes bench/results.json. See
the README (Performance) for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    VENV_BIN,
    BenchRedis,
    LoadMeter,
    Memory,
    Workers,
    machine_info,
    ping_workers,
    process_tree,
)
from bench.sink import AioSink, CSink, Sink, find_smtp_sink  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
BULK_REALM = "bench-bulk"
TX_REALM = "bench-tx"
TEMPLATE = "email-verification"
TX_TEMPLATE = "password-reset"
USER = {"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com"}
CONTEXT = {
    "user": USER,
    "realm_name": "ACME Bank",
    "link": "https://iam.example.com/verify?key=0123456789abcdef",
    "link_expiration": 720,
}

TARGETS = {
    "bulk_rate": 3000.0,  # messages/s
    "bulk_vs_naive": 8.0,
    "bulk_vs_ceiling": 0.40,
    "burst_p99_ms": 250.0,
    "idle_p99_ms": 50.0,
    "test_connection_s": 1.0,
    "rss_growth": 0.20,
}


# The processes this run started (for the CPU split between the bench and the rest of the machine).
OWN: list[Any] = [lambda: [os.getpid()]]


def own_pids() -> list[int]:
    pids: set[int] = set()
    for source in OWN:
        with contextlib.suppress(Exception):
            pids.update(source())
    return sorted(pids)


def own_tree(workers: Workers) -> Any:
    return lambda: process_tree(workers.pid) if workers.running() else []


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (p99 of fewer than 100 samples is their maximum)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _r(percentile(values, 50)),
        "p99_ms": _r(percentile(values, 99)),
        "max_ms": _r(max(values) if values else None),
        "mean_ms": _r(statistics.fmean(values) if values else None),
    }


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---- environment -----------------------------------------------------------------------------------------


def service_env(redis: BenchRedis) -> dict[str, str]:
    """The service's configuration for the bench: everything on the bench's own Redis, keys prefixed."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_")}
    env.update(
        MAILWORKER_BROKER_URL=redis.url_for(0),
        MAILWORKER_RESULT_BACKEND=redis.url_for(0),
        MAILWORKER_STORE_URL=redis.url_for(0),
        MAILWORKER_SECRET_KEY=Fernet.generate_key().decode(),
        MAILWORKER_KEY_PREFIX="mwbench",
        MAILWORKER_BROKER_KEY_PREFIX="",
        MAILWORKER_RECIPIENT_COOLDOWN="0",
        MAILWORKER_LOG_LEVEL="WARNING",
        MAILWORKER_RESULT_EXPIRES="3600",
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


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


# ---- phases ----------------------------------------------------------------------------------------------


def prebuilt_messages(n: int) -> list[tuple[str, list[str], bytes]]:
    """n messages built by the service's own builder (same template and size as the bulk)."""
    from config.smtp import parse_smtp_settings
    from worker.content.message import build_message
    from worker.content.render import TemplateRenderer

    settings = parse_smtp_settings({"from": "noreply@bench.example", "host": "127.0.0.1"})
    rendered = TemplateRenderer(None).render(BULK_REALM, TEMPLATE, None, CONTEXT)
    out = []
    for i in range(n):
        msg = build_message(settings, rendered, f"user{i}@example.com")
        out.append((msg.envelope_from, list(msg.recipients), msg.data))
    return out


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


class TransactionalLoad(threading.Thread):
    """Enqueues one transactional e-mail every 1/rate seconds to a unique recipient until stopped."""

    def __init__(self, rate: float, tag: str) -> None:
        super().__init__(daemon=True, name=f"tx-{tag}")
        self.rate = rate
        self.tag = tag
        self.stop_event = threading.Event()
        self.sent: list[tuple[str, float, str]] = []  # (recipient, time.time() before enqueue, job id)
        self.errors: list[str] = []

    def run(self) -> None:
        from tasks import api

        interval = 1 / self.rate
        next_at = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            to = f"tx-{slug(self.tag)}-{i}-{uuid.uuid4().hex[:6]}@example.com"
            context = {**CONTEXT, "link_expiration": 5}
            enqueued_at = time.time()
            try:
                job_id = api.send_email(TX_REALM, TX_TEMPLATE, to, context=context)
                self.sent.append((to, enqueued_at, job_id))
            except Exception as error:  # reported, not fatal
                self.errors.append(f"{type(error).__name__}: {error}")
            i += 1
            next_at += interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)

    def results(self, latency_sink: AioSink, timeout: float = 60) -> dict[str, Any]:
        """Latency per message: sink arrival - enqueue (primary) and result's sent_at - enqueue."""
        from tasks import api

        deadline = time.monotonic() + timeout
        result_ms: list[float] = []
        statuses: dict[str, int] = {}
        for _to, enqueued_at, job_id in self.sent:
            try:
                value = api.wait_for_result(job_id, timeout=max(0.5, deadline - time.monotonic()))
            except Exception as error:
                statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
                continue
            statuses[value.get("status", "?")] = statuses.get(value.get("status", "?"), 0) + 1
            if value.get("sent_at"):
                result_ms.append((value["sent_at"] - enqueued_at) * 1000)
        arrivals = latency_sink.arrivals()
        sink_ms = [(arrivals[to] - enqueued_at) * 1000 for to, enqueued_at, _ in self.sent if to in arrivals]
        return latency_summary(
            sink_ms, result_ms, enqueued=len(self.sent), statuses=statuses, errors=self.errors[:5]
        )


def without_result_samples(figures: Any) -> Any:
    """The JSON keeps the sink's latency samples; the result-side ones only as their summary."""
    if isinstance(figures, dict):
        return {k: without_result_samples(v) for k, v in figures.items() if k != "result_samples_ms"}
    if isinstance(figures, list):
        return [without_result_samples(v) for v in figures]
    return figures


def latency_summary(
    sink_ms: list[float],
    result_ms: list[float],
    *,
    enqueued: int,
    statuses: dict[str, int],
    errors: list[str],
) -> dict[str, Any]:
    out = summary_ms(sink_ms)
    out.update(
        enqueued=enqueued,
        arrived=len(sink_ms),
        statuses=statuses,
        by_result_sent_at=summary_ms(result_ms),
        enqueue_errors=errors,
        samples_ms=[round(v, 1) for v in sink_ms],
        result_samples_ms=[round(v, 1) for v in result_ms],
    )
    return out


def pooled_latency(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One latency summary over the samples of several runs."""
    statuses: dict[str, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return latency_summary(
        [v for part in parts for v in part["samples_ms"]],
        [v for part in parts for v in part["result_samples_ms"]],
        enqueued=sum(part["enqueued"] for part in parts),
        statuses=statuses,
        errors=[e for part in parts for e in part["enqueue_errors"]][:5],
    )


class ConnectionTests(threading.Thread):
    """Runs Test Connection (tasks.connection.test_connection) on a realm back to back, with a pause."""

    def __init__(self, realm: str, pause: float = 0.25, first_after: float = 0.1) -> None:
        super().__init__(daemon=True, name="test-connection")
        self.realm = realm
        self.pause = pause
        self.first_after = first_after
        self.stop_event = threading.Event()
        self.rounds: list[tuple[float, bool, str | None]] = []  # (seconds, ok, error)

    def run(self) -> None:
        from tasks.connection import test_connection

        if self.stop_event.wait(self.first_after):
            return
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                status = test_connection(self.realm, use_draft=False, timeout=30)
                ok, error = bool(status.get("ok")), status.get("error")
            except Exception as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            self.rounds.append((time.monotonic() - started, ok, error))
            self.stop_event.wait(self.pause)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(35)

    def summary(self) -> dict[str, Any]:
        return connection_summary(
            [s for s, _, _ in self.rounds],
            sum(1 for _, ok, _ in self.rounds if ok),
            [e or "?" for _, ok, e in self.rounds if not ok],
        )


def connection_summary(seconds: list[float], ok: int, errors: list[str]) -> dict[str, Any]:
    return {
        "n": len(seconds),
        "ok": ok,
        "p50_s": _r(percentile(seconds, 50), 3),
        "max_s": _r(max(seconds) if seconds else None, 3),
        "errors": errors[:3],
        "samples_s": [round(v, 3) for v in seconds],
    }


def pooled_connection(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return connection_summary(
        [v for part in parts for v in part["samples_s"]],
        sum(part["ok"] for part in parts),
        [e for part in parts for e in part["errors"]],
    )


class MemorySampler(threading.Thread):
    """The workers' memory once a second; keeps the peak."""

    def __init__(self, workers: Workers) -> None:
        super().__init__(daemon=True, name="memory")
        self.workers = workers
        self.peak = Memory(0, 0, 0)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            memory = self.workers.memory()
            if memory.rss_kib > self.peak.rss_kib:
                self.peak = memory

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def save_realms(bulk_sink: Sink, latency_sink: AioSink) -> None:
    from worker.runtime import runtime

    store = runtime().store
    store.save(
        BULK_REALM,
        {
            "from": "noreply@bench.example",
            "from_display_name": "ACME Identity",
            "host": bulk_sink.host,
            "port": bulk_sink.port,
        },
    )
    store.save(
        TX_REALM,
        {
            "from": "noreply@bench.example",
            "from_display_name": "ACME Identity",
            "host": latency_sink.host,
            "port": latency_sink.port,
        },
    )


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


def thin(points: list[Any], at_most: int) -> list[Any]:
    """Every k-th point (and the last), so the JSON stays small."""
    if len(points) <= at_most:
        return points
    step = -(-len(points) // at_most)
    return [*points[::step][: at_most - 1], points[-1]]


def rate_by_fraction(timeline: list[tuple[float, int]], n: int, parts: int) -> list[float | None]:
    """Messages/s over each 1/parts of the messages (from the sink's counter samples): a slowdown shows."""
    rates: list[float | None] = []
    previous_t, previous_c = 0.0, 0
    for k in range(1, parts + 1):
        goal = n * k // parts
        crossed = next(((t, c) for t, c in timeline if c >= goal), None)
        if crossed is None:
            rates.append(None)
            continue
        t, c = crossed
        rates.append(round((c - previous_c) / (t - previous_t), 0) if t > previous_t else None)
        previous_t, previous_c = t, c
    return rates


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


def pooled_bursts(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """The burst figures over several runs: the median rate; latency and Test Connection pooled."""
    rates = [b["rate"] for b in bursts if b["rate"]]
    return {
        "runs": len(bursts),
        "messages": bursts[0]["messages"],
        "delivered": min(b["delivered"] for b in bursts),
        "complete": all(b["complete"] for b in bursts),
        "rate": statistics.median(rates) if rates else None,
        "rates": rates,
        "seconds": [b["seconds"] for b in bursts],
        "latency": pooled_latency([b["latency"] for b in bursts]),
        "test_connection": pooled_connection([b["test_connection"] for b in bursts]),
    }


def _mem(memory: Memory) -> dict[str, Any]:
    return {
        "per_process_rss_mib": [[pid, name, round(kib / 1024, 1)] for pid, name, kib in memory.per_process],
        "rss_mib": memory.rss_mib,
        "pss_mib": memory.pss_mib,
        "rss_kib": memory.rss_kib,
        "processes": memory.processes,
    }


# ---- report ----------------------------------------------------------------------------------------------


def checks(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: figure, value, target, PASS/FAIL (blank without a target); a missing figure never passes."""
    service = figures.get("service", {})
    burst, idle, large = service.get("burst", {}), service.get("idle", {}), service.get("bulk_large", {})
    naive, ceiling, ratios = figures.get("naive", {}), figures.get("ceiling", {}), figures.get("ratios", {})
    mem = figures.get("memory", {})
    rows: list[dict[str, Any]] = []

    def row(
        name: str, value: Any, unit: str, target: str = "-", ok: bool | None = None, note: str = ""
    ) -> None:
        rows.append({"figure": name, "value": value, "unit": unit, "target": target, "pass": ok,
                     "note": "not measured" if value is None else note})  # fmt: skip

    def at_least(value: Any, limit: float) -> bool | None:
        return None if value is None else value >= limit

    def below(value: Any, limit: float) -> bool | None:
        return None if value is None else value < limit

    def pct(value: float | None) -> float | None:
        return None if value is None else round(value * 100, 1)

    rate = burst.get("rate")
    rates = ", ".join(f"{r:.0f}" for r in burst.get("rates", []))
    row("bulk throughput (service)", rate, "msg/s", f">= {TARGETS['bulk_rate']:.0f}", at_least(rate, TARGETS["bulk_rate"]),
        f"median of {burst.get('runs')} x {burst.get('messages', 0):,} recipients: {rates}")  # fmt: skip
    row("naive baseline", naive.get("rate"), "msg/s", note=f"{naive.get('messages')} msgs")
    row("raw smtplib ceiling", ceiling.get("rate"), "msg/s",
        note=f"{ceiling.get('messages')} msgs, {ceiling.get('processes')} connections")  # fmt: skip
    row("service / naive", ratios.get("service_vs_naive"), "x", f">= {TARGETS['bulk_vs_naive']:g}",
        at_least(ratios.get("service_vs_naive"), TARGETS["bulk_vs_naive"]))  # fmt: skip
    row("service / ceiling", pct(ratios.get("service_vs_ceiling")), "%", f">= {pct(TARGETS['bulk_vs_ceiling']):.0f}",
        at_least(ratios.get("service_vs_ceiling"), TARGETS["bulk_vs_ceiling"]))  # fmt: skip
    lat = burst.get("latency", {})
    row("transactional p50, burst", lat.get("p50_ms"), "ms", note=f"n={lat.get('n')}")
    row("transactional p99, burst", lat.get("p99_ms"), "ms", f"< {TARGETS['burst_p99_ms']:.0f}",
        below(lat.get("p99_ms"), TARGETS["burst_p99_ms"]), f"n={lat.get('n')}, max {lat.get('max_ms')}")  # fmt: skip
    ilat = idle.get("latency", {})
    row("transactional p50, idle", ilat.get("p50_ms"), "ms", note=f"n={ilat.get('n')}")
    row("transactional p99, idle", ilat.get("p99_ms"), "ms", f"< {TARGETS['idle_p99_ms']:.0f}",
        below(ilat.get("p99_ms"), TARGETS["idle_p99_ms"]), f"n={ilat.get('n')}, max {ilat.get('max_ms')}")  # fmt: skip
    tc = burst.get("test_connection", {})
    tc_ok = below(tc.get("max_s"), TARGETS["test_connection_s"])
    if tc_ok and tc.get("ok") != tc.get("n"):
        tc_ok = False  # a failed test is not a pass, however fast
    row("Test Connection, burst (max)", tc.get("max_s"), "s", f"< {TARGETS['test_connection_s']:g}", tc_ok,
        f"n={tc.get('n')}, ok={tc.get('ok')}, p50 {tc.get('p50_s')}")  # fmt: skip
    itc = idle.get("test_connection", {})
    row("Test Connection, idle (max)", itc.get("max_s"), "s", note=f"n={itc.get('n')}, ok={itc.get('ok')}")
    if large:
        llat, ltc = large.get("latency", {}), large.get("test_connection", {})
        size = f"{large.get('messages', 0):,}"
        row(f"bulk throughput, {size} recipients", large.get("rate"), "msg/s",
            note=f"{large.get('delivered')} delivered")  # fmt: skip
        row(f"transactional p99, {size} bulk", llat.get("p99_ms"), "ms",
            note=f"n={llat.get('n')}, p50 {llat.get('p50_ms')}")  # fmt: skip
        row(
            f"Test Connection, {size} bulk (max)",
            ltc.get("max_s"),
            "s",
            note=f"n={ltc.get('n')}, ok={ltc.get('ok')}",
        )
    row("worker RSS, first point", mem.get("after_burst_mib"), "MiB",
        note=f"after {mem.get('after_burst_messages')} msgs; PSS {mem.get('after_burst_pss_mib')} MiB")  # fmt: skip
    row("worker RSS, last point", mem.get("after_large_mib"), "MiB",
        note=f"after {mem.get('after_large_messages')} msgs; PSS {mem.get('after_large_pss_mib')} MiB")  # fmt: skip
    growth = mem.get("growth")
    row("worker RSS growth", pct(growth), "%", f"within {pct(TARGETS['rss_growth']):.0f}",
        None if growth is None else abs(growth) <= TARGETS["rss_growth"], f"{mem.get('processes')} processes")  # fmt: skip
    return rows


def derive(figures: dict[str, Any]) -> None:
    service = figures.get("service", {})
    rate = service.get("burst", {}).get("rate")
    naive = figures.get("naive", {}).get("rate")
    ceiling = figures.get("ceiling", {}).get("rate")
    figures["ratios"] = {
        "service_vs_naive": round(rate / naive, 2) if rate and naive else None,
        "service_vs_ceiling": round(rate / ceiling, 3) if rate and ceiling else None,
        "naive_vs_ceiling": round(naive / ceiling, 3) if naive and ceiling else None,
    }
    after_burst = service.get("memory_after_burst")
    after_large = service.get("memory_after_large")
    memory: dict[str, Any] = {}
    if after_burst:
        warm = service.get("warmup_bulk", {}).get("delivered", 0)
        memory["after_burst_mib"] = after_burst["rss_mib"]
        memory["after_burst_pss_mib"] = after_burst["pss_mib"]
        memory["after_burst_messages"] = warm + service["bursts"][0]["delivered"]
    if after_burst and after_large:
        memory["after_large_mib"] = after_large["rss_mib"]
        memory["after_large_pss_mib"] = after_large["pss_mib"]
        memory["after_large_messages"] = (
            memory["after_burst_messages"]
            + sum(b["delivered"] for b in service["bursts"][1:])
            + service["bulk_large"]["delivered"]
        )
        memory["growth"] = round(after_large["rss_kib"] / after_burst["rss_kib"] - 1, 4)
        memory["peak_during_large_mib"] = service["bulk_large"].get("peak_rss_mib")
        memory["processes"] = after_large["processes"]
    figures["memory"] = memory


def headline(report: dict[str, Any]) -> str:
    machine, sink = report["machine"], report["sink"]
    service = report["figures"].get("service", {})
    others = [b["cpu"]["cpu_others"] for b in service.get("bursts", []) if "cpu" in b]
    fallback = (
        "" if sink["bulk"].startswith("postfix") else " (FALLBACK: slower than smtp-sink, not comparable)"
    )
    return (
        f"iam-mail-worker bench{' --quick (small N: figures not comparable)' if report['quick'] else ''}, "
        f"{report['timestamp']}: {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"sink: {sink['bulk']}{fallback}; CPU busy before the run {machine['cpu_busy_before']:.0%}"
        + (f", other processes' CPU during the bursts {statistics.fmean(others):.0%}" if others else "")
    )


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    def cell(value: Any, unit: str) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.3f}" if unit == "s" else f"{value:,.1f}"
        return str(value)

    head = ("figure", "value", "target", "", "note")
    lines = [
        (
            r["figure"],
            f"{cell(r['value'], r['unit'])} {r['unit']}",
            r["target"],
            {True: "PASS", False: "FAIL", None: ""}[r["pass"]],
            r["note"],
        )
        for r in rows
    ]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "| --- | ---: | --- | --- | --- |"]
        out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(line[i]) for line in [*lines, head]) for i in range(5)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def show(path: Path, markdown: bool) -> int:
    report = json.loads(path.read_text())
    print(headline(report) + "\n")
    print(format_table(checks(report["figures"]), markdown))
    return 0


# ---- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N for development: 2,000 burst, 1,000 naive, 10,000 for memory, 5 s idle",
    )
    parser.add_argument("--messages", type=int, help="recipients in the bulk burst (default 20,000)")
    parser.add_argument(
        "--bursts",
        type=int,
        default=3,
        help="bulk bursts of --messages (median rate, latency pooled; default 3)",
    )
    parser.add_argument(
        "--rss-messages", type=int, help="recipients of the memory bulk (default 100,000; 0: skip)"
    )
    parser.add_argument(
        "--naive-messages", type=int, help="messages for the naive baseline (default: --messages)"
    )
    parser.add_argument(
        "--naive-max-seconds",
        type=float,
        default=240,
        help="stop the naive run after this long and report the rate over what arrived",
    )
    parser.add_argument("--ceiling-messages", type=int, help="messages for the ceiling (default: --messages)")
    parser.add_argument("--idle-seconds", type=float, help="idle latency window (default 20 s)")
    parser.add_argument(
        "--latency-rate", type=float, default=10.0, help="transactional messages/s (default 10)"
    )
    parser.add_argument(
        "--processes", type=int, default=cpus, help="ceiling and naive processes (default: nproc)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=cpus, help="transactional worker processes (default: nproc)"
    )
    parser.add_argument(
        "--bulk-concurrency", type=int, default=cpus, help="bulk worker processes (default: nproc)"
    )
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--no-fetch", action="store_true", help="do not run bench/get-smtp-sink.sh")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: ceiling,naive,service")
    parser.add_argument("--skip-warm-bulk", action="store_true", help="no 2,000-recipient warm-up bulk")
    parser.add_argument(
        "--stall-seconds", type=float, default=60, help="give up when the sink counts nothing this long"
    )
    parser.add_argument("--bulk-max-seconds", type=float, default=900)
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where the JSON goes (default bench/results.json)"
    )
    parser.add_argument(
        "--show", action="store_true", help="only print the table of --output (an earlier run)"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the docs)")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep worker and sink logs (always on failure)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (2_000 if quick else 20_000)
    if args.rss_messages is None:
        args.rss_messages = 10_000 if quick else 100_000
    args.naive_messages = args.naive_messages or (min(1_000, args.messages) if quick else args.messages)
    args.ceiling_messages = args.ceiling_messages or args.messages
    args.idle_seconds = args.idle_seconds if args.idle_seconds is not None else (5.0 if quick else 20.0)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


@contextlib.contextmanager
def phase(name: str, figures: dict[str, Any]) -> Iterator[None]:
    """A failed phase is reported (error in the JSON, FAIL or n/a in the table); the others still run."""
    try:
        yield
    except Exception as error:
        log(f"{name}: FAILED: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        figures.setdefault(name, {})["error"] = f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.output, args.markdown)
    import tempfile

    log_dir = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    log(f"logs in {log_dir}")
    machine = machine_info()
    meter = LoadMeter(own_pids).start()
    time.sleep(1.0)
    machine["cpu_before"] = meter.stop()
    machine["cpu_busy_before"] = machine["cpu_before"]["cpu_busy"]
    if machine["cpu_busy_before"] > 0.25:
        log(
            f"warning: the machine is {machine['cpu_busy_before']:.0%} busy before the run; figures will be low"
        )
    figures: dict[str, Any] = {}
    redis = BenchRedis().start()
    OWN.append(lambda: [redis.pid()] if redis.pid() else [])
    log(f"redis-server on port {redis.port}")
    sinks: list[Sink] = []
    try:
        env = service_env(redis)
        bulk_sink, latency_sink, sink_info = open_sinks(args, log_dir)
        sinks = [bulk_sink, latency_sink]
        OWN.extend(sink.pids for sink in sinks)
        if "ceiling" not in args.skip:
            with phase("ceiling", figures):
                figures["ceiling"] = phase_ceiling(args, bulk_sink)
        if "naive" not in args.skip:
            with phase("naive", figures):
                figures["naive"] = phase_naive(args, bulk_sink, redis, env, log_dir)
        if "service" not in args.skip:
            figures["service"] = {}
            with phase("service", figures):
                phase_service(args, bulk_sink, latency_sink, env, log_dir, figures["service"])
    finally:
        for sink in sinks:
            sink.stop()
        redis.stop()
    machine["loadavg_after"] = list(os.getloadavg())
    derive(figures)
    rows = checks(figures)
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "sink": sink_info,
        "options": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "targets": TARGETS,
        "figures": without_result_samples(figures),
        "table": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.output)
    print("\n" + headline(report) + "\n")
    print(format_table(rows, args.markdown))
    print(f"\nwritten: {args.output}")
    failed = [name for name, value in figures.items() if isinstance(value, dict) and "error" in value]
    if failed or args.keep_logs:
        print(f"logs kept in {log_dir}" + (f" (failed phases: {', '.join(failed)})" if failed else ""))
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
