"""deploy/prometheus/alerts.yml and deploy/grafana/mailworker.json: the rules parse (`promtool check rules`
when promtool is installed, else their structure), and every metric they name is one a real scrape of
/metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import ApiServer

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mailworker.json"
METRIC = re.compile(r"\bmailworker_[A-Za-z0-9_:]*")
DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    queries += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


def test_the_rules_parse() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert [group["name"] for group in groups] == ["mailworker"]
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Mailworker[A-Za-z]+", rule["alert"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        assert "for" not in rule or DURATION.match(rule["for"]), rule
        assert rule["labels"]["severity"] in ("page", "warn")
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert (
            f"\n### {anchor.replace('-', ' ')}".lower() in (ROOT / "docs" / "runbook.md").read_text().lower()
        )


def test_the_rules_cover_what_the_issue_asks() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in rules()}
    assert 'mailworker_queue_oldest_age_seconds{queue="transactional"} > 60' in exprs.values()
    assert any("dead_lettered" in e and "mailworker_jobs_total" in e for e in exprs.values())
    assert any("mailworker_breaker_open" in e for e in exprs.values())
    assert any("mailworker_webhook_backlog" in e and "deriv" in e for e in exprs.values())


def test_the_dashboard_shows_what_the_issue_asks() -> None:
    queries = " ".join(dashboard_queries())
    for needed in ("mailworker_queue_depth", "mailworker_queue_oldest_age_seconds", "mailworker_jobs_total",
                   "histogram_quantile(0.95", "mailworker_smtp_errors_total", "mailworker_breaker_open",
                   "mailworker_webhook_backlog"):  # fmt: skip
        assert needed in queries, needed


@pytest.mark.integration
def test_rules_and_dashboard_name_only_exported_metrics(api: ApiServer, admin_token: str) -> None:
    reply = api.client(admin_token).get("/metrics")
    assert reply.status_code == 200
    exported = {family.name + suffix for family in text_string_to_metric_families(reply.text)
                for suffix in SUFFIXES[family.type]}  # fmt: skip
    assert {"mailworker_jobs_total", "mailworker_delivery_seconds_bucket", "mailworker_up"} <= exported
    for expr in [rule["expr"] for rule in rules()] + dashboard_queries():
        named = set(METRIC.findall(expr))
        assert named, f"names no metric: {expr}"
        assert named <= exported, f"{expr}: not exported: {sorted(named - exported)}"
