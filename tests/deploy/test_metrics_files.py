"""The alert rules and the Grafana dashboard use only metrics the workers export, and are
provisioned where docker-compose.yml mounts them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from schemas.settings import BrokerSettings
from tests.deploy.support import ROOT
from workers.hooks.metrics import WorkerMetrics

RULES = ROOT / "deploy" / "prometheus" / "rules"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC = re.compile(r"\bscoring_[a-z0-9_]+\b")


def exported() -> set[str]:
    """Every series a worker can export: with Redis, the Kafka lag reader and drift."""
    metrics = WorkerMetrics("w", BrokerSettings())
    metrics.add_kafka_lag(list)
    metrics.add_drift(dict)
    return metrics.metric_names()


def rules() -> list[dict[str, Any]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += group["rules"]
    return out


def dashboard_exprs(path: Path) -> list[str]:
    panels = json.loads(path.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_the_alerts_cover_lag_errors_dead_letters_idle_workers_and_warm_up() -> None:
    alerts = {r["alert"]: r for r in rules()}
    assert {
        "ScoringKafkaLagGrowing",
        "ScoringErrorRate",
        "ScoringDeadLetters",
        "ScoringNoWorkerConsuming",
        "ScoringWarmUpFailures",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"], name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), name


def test_rules_and_dashboards_use_only_exported_metrics() -> None:
    known = exported()
    used: dict[str, set[str]] = {}
    for rule in rules():
        used.setdefault(rule["alert"], set()).update(METRIC.findall(rule["expr"]))
    assert DASHBOARDS
    for path in DASHBOARDS:
        for expr in dashboard_exprs(path):
            used.setdefault(path.name, set()).update(METRIC.findall(expr))
    unknown = {where: names - known for where, names in used.items() if names - known}
    assert unknown == {}, f"metrics no worker exports: {unknown}"
    everything = set().union(*used.values())
    # the alerts and the dashboard between them watch each kind of metric
    for name in (
        "scoring_requests_total",
        "scoring_dead_letters_total",
        "scoring_kafka_consumer_lag",
        "scoring_redis_queue_length",
        "scoring_model_load_failures_total",
        "scoring_inference_seconds_bucket",
        "scoring_queue_wait_seconds_bucket",
        "scoring_batch_size_requests_bucket",
    ):
        assert name in everything, name


def test_prometheus_loads_the_rules_folder() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/rules/*.yml" in config["rule_files"]
    assert (RULES / "alerts.yml").is_file()


def test_grafana_provisions_the_datasource_and_the_dashboards_folder() -> None:
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {s["uid"] for s in sources["datasources"] if s["type"] == "prometheus"}
    assert {s["url"] for s in sources["datasources"]} == {"http://prometheus:9090"}
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "scoring.yml").read_text()
    )
    # the folder docker-compose.yml mounts ./deploy/grafana/dashboards/ at
    assert [p["options"]["path"] for p in providers["providers"]] == ["/var/lib/grafana/dashboards"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], panel["title"]
