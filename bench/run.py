"""`make bench`: throughput, latency, Test Connection and memory of the service, with its baselines, in one run.

    .venv/bin/python bench/run.py            # the full run (20,000-message burst, 100,000 for memory)
    .venv/bin/python bench/run.py --quick    # small N, for development (figures not comparable)
    .venv/bin/python bench/run.py --redis-cost   # only Redis commands per message (about a minute)
    .venv/bin/python bench/run.py --scale-out    # only the 1/2/4 worker-group run (about a minute)

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
6. redis_cost - Redis commands per delivered message, transactional and bulk (bench/costrun.py)
7. scale_out  - 1, 2 and 4 worker groups on one Redis: throughput and Redis CPU (bench/scaleout.py)

Prints a table (figure, value, target, pass/fail) and writes bench/results.json. See
the README (Performance) for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from bench.costrun import phase_redis_cost  # noqa: E402
from bench.figures import TARGETS, checks, derive, format_table, headline, render, without_result_samples  # noqa: E402
from bench.harness import OWN, BenchRedis, LoadMeter, log, machine_info, own_pids  # noqa: E402
from bench.phases import open_sinks, phase_ceiling, phase_naive, phase_service  # noqa: E402
from bench.scaleout import phase_scale_out  # noqa: E402
from bench.sink import Sink  # noqa: E402
from bench.workload import service_env  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"


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
    parser.add_argument(
        "--redis-cost",
        action="store_true",
        help="only the Redis-cost phase; its figures are merged into --output's earlier run",
    )
    parser.add_argument(
        "--cost-messages", type=int, default=1000, help="e-mail verifications of the Redis-cost phase"
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="only the scale-out phase (1, 2, 4 worker groups); merged into --output's earlier run",
    )
    parser.add_argument("--scale-messages", type=int, help="messages per group count (default 3,000)")
    parser.add_argument("--scale-concurrency", type=int, default=2, help="processes per worker group")
    parser.add_argument("--cost-bulk-messages", type=int, help="bulk recipients of the Redis-cost phase")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--no-fetch", action="store_true", help="do not run bench/get-smtp-sink.sh")
    parser.add_argument(
        "--skip",
        default="",
        help="phases to skip, comma-separated: ceiling,naive,service,redis_cost,scale_out",
    )
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
    args.cost_bulk_messages = args.cost_bulk_messages or (2_000 if quick else 10_000)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.scale_messages = args.scale_messages or (1_000 if quick else 3_000)
    only = {
        name for name, chosen in (("redis_cost", args.redis_cost), ("scale_out", args.scale_out)) if chosen
    }
    if only:
        args.skip |= {"ceiling", "naive", "service", "redis_cost", "scale_out"} - only
    return args


@contextlib.contextmanager
def phase(name: str, figures: dict[str, Any]) -> Iterator[None]:
    """A failed phase is reported (error in the JSON, FAIL or n/a in the table); the others still run."""
    try:
        yield
    except Exception as error:
        log(f"{name}: FAILED: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        figures.setdefault(name, {})["error"] = f"{type(error).__name__}: {error}"


def measure(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every phase not skipped, on the run's own Redis and sinks: (figures, sink description)."""
    figures: dict[str, Any] = {}
    redis = BenchRedis()
    redis.start()
    OWN.append(lambda: [pid for pid in [redis.pid()] if pid])
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
        if "redis_cost" not in args.skip:
            with phase("redis_cost", figures):
                figures["redis_cost"] = phase_redis_cost(args, bulk_sink, latency_sink, redis, env, log_dir)
        if "scale_out" not in args.skip:
            with phase("scale_out", figures):
                figures["scale_out"] = phase_scale_out(args, bulk_sink, redis, env, log_dir)
    finally:
        for sink in sinks:
            sink.stop()
        redis.stop()
    return figures, sink_info


# This checkout's location, as a whole path component: "/x/repo" and "/x/repo/..." but not "/x/repo2".
_CHECKOUT = re.compile(re.escape(str(ROOT)) + r"(?:/|(?![\w.-]))")


def portable(value: Any) -> Any:
    """`value` with this checkout's location cut out of every string: paths relative to the repository.

    results.json is committed and read by the docs; the place a run happened to be checked out (in the
    --output option, or in an error that names a file) would differ on every machine and mean nothing
    to a reader.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, set):
        return sorted(portable(v) for v in value)
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return _CHECKOUT.sub(lambda m: "" if m.group(0).endswith("/") else ".", value)
    return value


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # a reader (--show, the docs) never sees half a file
    tmp.write_text(json.dumps(portable(report), indent=2) + "\n")
    tmp.replace(path)


def show(path: Path, markdown: bool) -> int:
    print(render(json.loads(path.read_text()), markdown))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.output, args.markdown)
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
    figures, sink_info = measure(args, log_dir)
    earlier: dict[str, Any] = {}
    if (args.redis_cost or args.scale_out) and args.output.exists():
        # Only this phase ran: the earlier run's figures, machine and options stay; this one's are added.
        earlier = json.loads(args.output.read_text())
        figures = {**earlier.get("figures", {}), **figures}
    machine["loadavg_after"] = list(os.getloadavg())
    derive(figures)
    rows = checks(figures)
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "sink": sink_info,
        "options": vars(args),
        "targets": TARGETS,
        "figures": without_result_samples(figures),
        "table": rows,
    }
    if earlier:
        this_run = {k: report[k] for k in ("timestamp", "quick", "machine", "sink", "options")}
        report = {**earlier, "figures": report["figures"], "table": rows, "redis_cost_run": this_run}
    write_report(args.output, report)
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
