"""The bench's figures code (no process started) and the rule that committed figures carry no machine paths.

`make bench` itself is not run here (minutes of both cores); what is checked is everything between its
samples and what a reader sees: percentiles, the checks against the targets, the table `--show --markdown`
prints, and that bench/results.json and docs/ name files relative to the repository.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from bench import run
from bench.figures import TARGETS, checks, derive, format_table, percentile, render
from tests.reliability import harness

ROOT = Path(__file__).resolve().parent.parent

# ---- percentile ------------------------------------------------------------------------------------------

ONE_TO = {n: [float(v) for v in range(1, n + 1)] for n in (2, 10, 99, 100, 200)}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7.0], 0, 7.0),
        ([7.0], 99, 7.0),
        ([5.0, 1.0, 3.0], 50, 3.0),  # unsorted input
        (ONE_TO[2], 50, 1.0),  # ceil(2 * 0.5) = rank 1: the lower of two
        (ONE_TO[10], 90, 9.0),
        (ONE_TO[10], 91, 10.0),
        (ONE_TO[99], 99, 99.0),  # p99 of fewer than 100 samples is their maximum
        (ONE_TO[100], 50, 50.0),
        (ONE_TO[100], 99, 99.0),  # not the maximum: one sample in 100 may be above the p99
        (ONE_TO[100], 100, 100.0),
        (ONE_TO[200], 99, 198.0),
        (ONE_TO[200], 0, 1.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_reliability_harness_uses_the_same_percentile() -> None:
    for values in ONE_TO.values():
        for q in (50, 90, 95, 99):
            assert harness.percentile(values, q) == percentile(values, q)
    # The scenarios do arithmetic on it: no samples is NaN there (a failed comparison), not None.
    assert math.isnan(harness.percentile([], 99))


# ---- checks against the targets --------------------------------------------------------------------------


def _latency(p50: float, p99: float, n: int = 150) -> dict[str, Any]:
    return {"n": n, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 + 5}


def _connection(max_s: float, n: int = 10, ok: int = 10) -> dict[str, Any]:
    return {"n": n, "ok": ok, "p50_s": max_s / 2, "max_s": max_s}


def _memory(rss_kib: int) -> dict[str, Any]:
    return {"rss_kib": rss_kib, "rss_mib": round(rss_kib / 1024, 1), "pss_mib": 100.0, "processes": 7}


def synthetic_figures(**service: Any) -> dict[str, Any]:
    """Figures as the phases leave them, every target met unless `service` overrides a part."""
    figures: dict[str, Any] = {
        "ceiling": {"rate": 6000.0, "messages": 20000, "processes": 2},
        "naive": {"rate": 300.0, "messages": 20000},
        "service": {
            "idle": {"latency": _latency(10.0, 20.0), "test_connection": _connection(0.02)},
            "warmup_bulk": {"delivered": 2000},
            "bursts": [{"delivered": 20000}] * 3,
            "burst": {
                "runs": 3,
                "messages": 20000,
                "rate": 4000.0,
                "rates": [4000.0, 4100.0, 3900.0],
                "latency": _latency(15.0, 90.0),
                "test_connection": _connection(0.05),
            },
            "bulk_large": {
                "messages": 100000,
                "delivered": 100000,
                "rate": 4500.0,
                "latency": _latency(15.0, 30.0),
                "test_connection": _connection(0.03),
            },
            "memory_after_burst": _memory(400 * 1024),
            "memory_after_large": _memory(410 * 1024),
        },
    }
    figures["service"].update(service)
    return figures


def verdicts(figures: dict[str, Any]) -> dict[str, bool | None]:
    derive(figures)
    return {row["figure"]: row["pass"] for row in checks(figures)}


def test_every_target_met() -> None:
    figures = synthetic_figures()
    result = verdicts(figures)
    assert figures["ratios"] == {
        "service_vs_naive": 13.33,
        "service_vs_ceiling": 0.667,
        "naive_vs_ceiling": 0.05,
    }
    assert figures["memory"]["growth"] == 0.025
    assert figures["memory"]["after_burst_messages"] == 22000
    assert figures["memory"]["after_large_messages"] == 22000 + 2 * 20000 + 100000
    assert {name for name, ok in result.items() if ok is not None} == {
        "bulk throughput (service)",
        "service / naive",
        "service / ceiling",
        "transactional p99, burst",
        "transactional p99, idle",
        "Test Connection, burst (max)",
        "worker RSS growth",
    }
    assert all(ok is not False for ok in result.values())


def test_a_figure_past_its_target_fails() -> None:
    burst = synthetic_figures()["service"]["burst"]
    slow = {**burst, "rate": 2999.0, "latency": _latency(15.0, TARGETS["burst_p99_ms"])}
    result = verdicts(synthetic_figures(burst=slow, memory_after_large=_memory(500 * 1024)))
    assert result["bulk throughput (service)"] is False
    assert result["transactional p99, burst"] is False  # "< 250": 250 itself fails
    assert result["service / naive"] is True  # 2999 / 300 is still 10x
    assert result["worker RSS growth"] is False  # +25%


def test_a_failed_test_connection_fails_however_fast() -> None:
    burst = {**synthetic_figures()["service"]["burst"], "test_connection": _connection(0.01, n=10, ok=9)}
    assert verdicts(synthetic_figures(burst=burst))["Test Connection, burst (max)"] is False


def test_a_missing_figure_never_passes() -> None:
    rows = checks({"service": {"error": "RuntimeError: no worker answered"}})
    assert all(row["pass"] is None for row in rows)
    assert {row["note"] for row in rows if row["value"] is None} == {"not measured"}


# ---- the table ---------------------------------------------------------------------------------------------


def small_report(bulk_sink: str = "postfix smtp-sink") -> dict[str, Any]:
    figures = synthetic_figures()
    derive(figures)
    return {
        "timestamp": "2026-01-02T03:04:05+00:00",
        "quick": False,
        "machine": {"nproc": 2, "cpu": "Test CPU", "python": "3.11.7", "cpu_busy_before": 0.01},
        "sink": {"bulk": bulk_sink},
        "figures": figures,
    }


def test_markdown_table_of_a_report() -> None:
    lines = render(small_report(), markdown=True).splitlines()
    assert lines[0] == (
        "iam-mail-worker bench, 2026-01-02T03:04:05+00:00: 2 cores (Test CPU), Python 3.11.7, "
        "sink: postfix smtp-sink; CPU busy before the run 1%"
    )
    assert lines[1] == ""
    assert lines[2:4] == ["| figure | value | target |  | note |", "| --- | ---: | --- | --- | --- |"]
    assert lines[4] == (
        "| bulk throughput (service) | 4,000.0 msg/s | >= 3000 | PASS "
        "| median of 3 x 20,000 recipients: 4000, 4100, 3900 |"
    )
    assert "| Test Connection, burst (max) | 0.050 s | < 1 | PASS | n=10, ok=10, p50 0.025 |" in lines
    assert "| naive baseline | 300.0 msg/s | - |  | 20000 msgs |" in lines
    assert len(lines) == 4 + len(checks(small_report()["figures"]))


def test_table_cells_cannot_break_the_markdown() -> None:
    row = {"figure": "a|b", "value": None, "unit": "ms", "target": "-", "pass": None, "note": "x|y"}
    assert format_table([row], markdown=True).splitlines()[-1] == "| a/b | n/a ms | - |  | x/y |"


def test_fallback_sink_is_said_in_the_headline() -> None:
    assert "FALLBACK" in render(small_report("aiosmtpd (Python)")).splitlines()[0]


def test_show_markdown_renders_the_committed_results(capsys: pytest.CaptureFixture[str]) -> None:
    results = ROOT / "bench" / "results.json"
    assert run.main(["--show", "--markdown", "--output", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = json.loads(results.read_text())["table"]
    assert lines[0].startswith("iam-mail-worker bench")  # "bench --quick (...)" for a quick run
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[4:]] == [row["figure"] for row in table]


# ---- no machine paths --------------------------------------------------------------------------------------

# Top directories under which a path names one machine's checkout, home or scratch space. System paths
# (/etc, /proc, /usr, /run/secrets, ...) and a container's (/app, /data) mean the same everywhere: allowed.
MACHINE_DIRS = r"(?:home|Users|root|tmp|var/tmp|var/folders|private|work|mnt|media|builds|workspace)"
# A path starts a token: not inside a URL ("https://host/work/x"), a relative path ("docs/tmp/x", "../tmp/x",
# "~/work") or a ratio ("p50/p99"); "file:///work/x" still counts.
MACHINE_PATH = re.compile(rf"(?:(?<![\w.~/-])|(?<=file://))/{MACHINE_DIRS}/[^\s\"'`<>()\[\]{{}},;|]*")


def machine_paths(text: str) -> list[str]:
    found = MACHINE_PATH.findall(text)
    # Wherever this checkout is, its own location must not appear either.
    return found + [str(ROOT)] * text.count(f"{ROOT}/")


@pytest.mark.parametrize(
    "text",
    [
        '"output": "/work/main/bench/results.json"',
        "logs in /tmp/mw-bench-x1y2/",
        "cd /home/alice/iam-mail-worker",
        "(/root/src/x)",
        "`/Users/bob/repo/bench`",
        "PATH=/usr/bin:/home/a/bin",
        "file:///work/main/docs/x.md",
        "error: '/var/folders/xy/T/mw-bench/log'",
    ],
)
def test_machine_path_found(text: str) -> None:
    assert machine_paths(text)


@pytest.mark.parametrize(
    "text",
    [
        "bench/results.json and docs/reliability.md",
        "p50/p99 of the transactional mail, 1/4 of the messages",
        "https://iam.example.com/work/tmp/verify?key=1",
        "redis://127.0.0.1:6379/0",
        "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
        "/etc/mailworker/realms/acme.json, /proc/<pid>/smaps_rollup, /run/secrets/smtp",
        "~/work/x, ../tmp/x, docs/tmp/x",
        "files go to /tmp",
    ],
)
def test_no_machine_path_in(text: str) -> None:
    assert machine_paths(text) == []


def test_committed_figures_and_docs_carry_no_machine_path() -> None:
    files = sorted(
        path
        for folder in ("bench", "docs")
        for ext in ("json", "md")
        for path in (ROOT / folder).rglob(f"*.{ext}")
    )
    assert ROOT / "bench" / "results.json" in files
    found = {str(path.relative_to(ROOT)): machine_paths(path.read_text()) for path in files}
    assert {name: paths for name, paths in found.items() if paths} == {}


def test_the_bench_writes_paths_relative_to_the_repository(tmp_path: Path) -> None:
    report = {
        "options": vars(run.parse_args([])),
        "figures": {
            "service": {"error": f"FileNotFoundError: '{ROOT}/.venv/bin/mailworker'"},
            "here": str(ROOT),
            "a sibling checkout": f"{ROOT}2/bench",
            "timeline": [(0.25, 10)],
        },
    }
    out = tmp_path / "results.json"
    run.write_report(out, report)
    written = json.loads(out.read_text())
    assert written["options"]["output"] == "bench/results.json"
    assert written["options"]["skip"] == []
    assert written["figures"] == {
        "service": {"error": "FileNotFoundError: '.venv/bin/mailworker'"},
        "here": ".",
        "a sibling checkout": f"{ROOT}2/bench",
        "timeline": [[0.25, 10]],
    }
