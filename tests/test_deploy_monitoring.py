"""The monitoring files under deploy/: Prometheus config, alert rules (with promtool unit tests),
Grafana provisioning and dashboard. Every metric they name must be one the controller exports.

`promtool` runs where installed (Debian package `prometheus`); its tests skip elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, load_yaml

# The metric names bound in INTERFACES.md; histograms also expose _bucket, _sum and _count.
HISTOGRAMS = {
    "vqs_source_read_duration_seconds",
    "vqs_loop_duration_seconds",
    "vqs_session_open_duration_seconds",
}
METRICS = HISTOGRAMS | {
    "vqs_build_info", "vqs_queue_waiting", "vqs_queue_in_flight", "vqs_target_sessions",
    "vqs_sessions_open", "vqs_sessions_opening", "vqs_decisions_total",
    "vqs_source_read_errors_total", "vqs_last_successful_read_timestamp_seconds", "vqs_paused",
    "vqs_sessions_opened_total", "vqs_sessions_closed_total", "vqs_session_open_failures_total",
    "vqs_keepalives_total", "vqs_ledger_writes_total", "vqs_sessions_adopted_total",
    "vqs_session_seconds_total", "vqs_leader", "vqs_renewals_behind", "vqs_vast_errors_total",
    "vqs_wait_late_share", "vqs_wait_late_share_allowed",
}
PENDING = {"vqs_leader"}  # promised by the leader-election work, not exported yet


def metric_names(expr: str) -> set[str]:
    """The vqs_ metrics a PromQL expression reads, histogram series folded into their name."""
    names = set()
    for name in re.findall(r"\bvqs_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


# --- Prometheus: config, alert rules and their unit tests --------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(DEPLOY / "prometheus/alerts.yaml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete_and_use_known_metrics() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= METRICS, rule["alert"]
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    assert exprs["VastQueueScalerNoLeader"] == "max(vqs_leader) == 0"


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = load_yaml(DEPLOY / "prometheus/alerts.test.yaml")
    assert tests["rule_files"] == ["alerts.yaml"]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alert_rules()}


def test_prometheus_config_loads_the_rules() -> None:
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"


def promtool(*args: str) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian package: prometheus)")
    result = subprocess.run(
        [tool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_config_and_rules() -> None:
    promtool("check", "config", "prometheus.yml")
    promtool("check", "rules", "alerts.yaml")


def test_promtool_runs_the_alert_unit_tests() -> None:
    promtool("test", "rules", "alerts.test.yaml")


# --- Grafana ----------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboard.json").read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_panels_query_known_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboard.json").read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"scaler", "price"} <= set(variables)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= METRICS, (panel["title"], target["expr"])
            used |= names
    titles = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    assert "vqs_session_open_duration_seconds_bucket" in titles["Session open latency"]
    assert "0.95" in titles["Session open latency"] and "0.5" in titles["Session open latency"]
    assert "vqs_session_seconds_total" in titles["Cost per hour"] and "$price" in titles["Cost per hour"]
    assert {"vqs_source_read_errors_total", "vqs_session_open_failures_total", "vqs_queue_waiting",
            "vqs_queue_in_flight", "vqs_sessions_open", "vqs_sessions_opening"} <= used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL; Grafana's variables are given values first.
    values = {"$__rate_interval": "1m", "$scaler": ".*", "$price": "1.5"}
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        for name, value in values.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_grafana_provisioning_finds_prometheus_and_the_dashboard() -> None:
    sources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert [(s["type"], s["url"]) for s in sources] == [("prometheus", "http://prometheus:9090")]
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/vast-queue-scaler.yaml")["providers"]
    grafana = load_yaml(DEPLOY / "compose.yaml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert Path(mounts["./grafana/dashboard.json"]).parent.as_posix() == providers[0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_metric_names_match_the_controller() -> None:
    metrics = pytest.importorskip("controller.metrics")
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in metrics.Metrics().registry.collect()}
    assert METRICS - PENDING <= exported
