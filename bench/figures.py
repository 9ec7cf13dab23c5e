"""The bench's figures, from samples to the table: pure functions of plain data, no process started.

`bench/run.py` measures (bench/phases.py) and hands the raw samples here: summaries and pooled figures,
the ratios and memory growth (`derive`), the rows checked against TARGETS (`checks`), and the printed
table (`headline`, `format_table`, `render`). `run.py --show` renders a results.json with the same code,
so the table of an earlier run reads the same as when it was measured.
"""

from __future__ import annotations

import statistics
from typing import Any

TARGETS = {
    "bulk_rate": 3000.0,  # messages/s
    "bulk_vs_naive": 8.0,
    "bulk_vs_ceiling": 0.40,
    "burst_p99_ms": 250.0,
    "idle_p99_ms": 50.0,
    "test_connection_s": 1.0,
    "rss_growth": 0.20,
    "redis_per_tx_message": 15.0,  # Redis commands per delivered message (issue 16)
    "redis_per_bulk_message": 2.0,
}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest sample with at least q% of the samples at or below it.

    Always one of the samples, never an interpolation, so a p99 is a latency some message really had; p99
    of fewer than 100 samples is their maximum. None for no samples: the table shows "n/a", and a check
    against a target never passes on a figure that was not measured.
    """
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


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---- latency and Test Connection -------------------------------------------------------------------------


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


def without_result_samples(figures: Any) -> Any:
    """The JSON keeps the sink's latency samples; the result-side ones only as their summary."""
    if isinstance(figures, dict):
        return {k: without_result_samples(v) for k, v in figures.items() if k != "result_samples_ms"}
    if isinstance(figures, list):
        return [without_result_samples(v) for v in figures]
    return figures


# ---- bulk runs -------------------------------------------------------------------------------------------


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


# ---- report ----------------------------------------------------------------------------------------------


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
    cost = figures.get("redis_cost", {})
    figures["redis_commands_per_message"] = {
        path: cost.get(path, {}).get("per_message") for path in ("transactional", "bulk")
    }


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
    cost, per = figures.get("redis_cost", {}), figures.get("redis_commands_per_message", {})
    for path, target in (("transactional", TARGETS["redis_per_tx_message"]),
                         ("bulk", TARGETS["redis_per_bulk_message"])):  # fmt: skip
        part = cost.get(path, {})
        top = ", ".join(f"{k} {v}" for k, v in list(part.get("by_command", {}).items())[:6])
        row(f"Redis commands per message, {path}", per.get(path), "cmds", f"<= {target:g}",
            None if per.get(path) is None else per[path] <= target,
            f"{part.get('messages')} msgs; {top}")  # fmt: skip
    for run in figures.get("scale_out", {}).get("runs", []):
        row(f"scale-out, {run['groups']} worker group(s)", run.get("rate"), "msg/s",
            note=f"x{run.get('speedup')}; Redis CPU {run.get('redis_cpu_share', 0):.0%} of a core, "
                 f"{run.get('redis_commands_per_s')} commands/s")  # fmt: skip
    return rows


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


def render(report: dict[str, Any], markdown: bool = False) -> str:
    """The headline and the table of a results.json report (what `run.py --show` prints)."""
    return headline(report) + "\n\n" + format_table(checks(report["figures"]), markdown)
