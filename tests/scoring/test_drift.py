"""Drift and accuracy as an operator meets them: score traffic through the real pipeline
(SQLite), then run `scoring drift` and `scoring feedback` as separate processes and read
their exit codes, their output, drift_reports and the gauges."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from schemas import drift_bins
from schemas.monitoring import accuracy_by_version
from schemas.tables import BatchMetric, DriftReport, ScoreResult, utcnow
from scoring.drift_check import ks_binned, psi
from tests.helpers import demo_requests, run_scoring
from workers.hooks.drift_metrics import DriftCollector, from_database
from workers.sources.base import WorkItem


def score(pipeline: Any, requests: list[dict[str, Any]]) -> None:
    for start in range(0, len(requests), 64):
        part = requests[start : start + 64]
        pipeline.process([WorkItem(payload=p, source="redis", enqueued_at=utcnow()) for p in part])


def shifted(requests: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    return [{**r, "inputs": {k: v * factor for k, v in r["inputs"].items()}} for r in requests]


def cli(url: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}
    return run_scoring(*args, env={**env, "SCORING_DATABASE_URL": url})


def test_bins_psi_and_ks_on_known_distributions() -> None:
    values = [float(v) for v in range(1000)]
    edges = drift_bins.edges_for(__import__("numpy").asarray(values))
    assert len(edges) == 9  # deciles: ten bins
    ref = drift_bins.reference({"x": values}, {"x": "float"}, labels=["a"] * 1000)
    assert sum(ref["features"]["x"]["counts"]) == 1000
    same = drift_bins.summarize(ref, {"x": values}, ["a"])
    assert psi(ref["features"]["x"]["counts"], same["bins"]["x"]) == pytest.approx(0.0, abs=1e-9)
    moved = drift_bins.summarize(ref, {"x": [v + 500 for v in values]}, [])
    assert psi(ref["features"]["x"]["counts"], moved["bins"]["x"]) > 1.0
    stat, p = ks_binned(ref["features"]["x"]["counts"], moved["bins"]["x"])
    assert stat == pytest.approx(0.5, abs=0.01) and p < 1e-10
    merged = drift_bins.merge([same, moved, None])
    assert merged["n"] == 2000 and sum(merged["bins"]["x"]) == 2000
    rows = [{"x": v, "y": -v} for v in values[:300]] + [{"x": float("nan"), "y": 1e9}]
    two = drift_bins.reference(
        {"x": values, "y": [-v for v in values]}, {"x": "float", "y": "float"}
    )
    fast = drift_bins.Binner(two).summarize_rows(rows, [])  # the row path's one-pass counts
    slow = drift_bins.summarize(two, {k: [r[k] for r in rows] for k in ("x", "y")}, [])
    assert fast["bins"] == slow["bins"] and sum(fast["bins"]["x"]) == 300
    text = drift_bins.reference({"t": ["ab", "abcd", None]}, {"t": "str"})
    assert sum(text["features"]["t"]["counts"]) == 2  # lengths; None is left out


def test_workers_store_binned_summaries_not_rows(demo_pipeline: Any) -> None:
    engine, pipeline, _, record = demo_pipeline
    assert record.reference_stats["features"]  # from the artifact's held-out rows
    score(pipeline, demo_requests(100))
    with engine.connect() as conn:
        summaries = conn.execute(select(BatchMetric.summary)).scalars().all()
    total = drift_bins.merge(summaries)
    assert total["n"] == 100 and sum(total["labels"].values()) == 100
    first = next(iter(record.reference_stats["features"]))
    assert sum(total["bins"][first]) == 100


def test_unshifted_traffic_is_not_flagged_and_shifted_is(
    demo_pipeline: Any, sqlite_url: str
) -> None:
    engine, pipeline, _, _ = demo_pipeline
    score(pipeline, demo_requests(600, seed=3))
    calm = cli(sqlite_url, "drift", "demo", "--window", "1h")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "no drift" in calm.stdout

    score(pipeline, shifted(demo_requests(1200, prefix="s", seed=4), 1.8))
    alarm = cli(sqlite_url, "drift", "demo", "--window", "1h", "--json")
    assert alarm.returncode == 1, alarm.stdout + alarm.stderr
    report = json.loads(alarm.stdout)
    assert report["rows"] == 1800 and report["verdict"]["drifted"] is True
    assert sum(f["drifted"] for f in report["features"].values()) >= 10
    with engine.connect() as conn:
        verdicts = conn.execute(select(DriftReport.drifted).order_by(DriftReport.id)).all()
    assert [v for (v,) in verdicts] == [False, True]


def test_too_few_rows_give_no_verdict(demo_pipeline: Any, sqlite_url: str) -> None:
    _, pipeline, _, _ = demo_pipeline
    score(pipeline, shifted(demo_requests(50), 3.0))
    done = cli(sqlite_url, "drift", "demo")
    assert done.returncode == 0 and "no verdict" in done.stdout, done.stdout


def test_feedback_gives_the_accuracy_computed_by_hand(
    demo_pipeline: Any, sqlite_url: str, tmp_path: Path
) -> None:
    engine, pipeline, _, _ = demo_pipeline
    score(pipeline, demo_requests(100))
    with engine.connect() as conn:
        predicted = dict(conn.execute(select(ScoreResult.request_id, ScoreResult.outputs)).all())
    assert len(predicted) == 100
    other = {"benign": "malignant", "malignant": "benign"}
    rows = []
    for i in range(100):
        label = predicted[f"r-{i}"]["label"]
        rows.append({"request_id": f"r-{i}", "label": label if i < 70 else other[label]})
    rows.append({"request_id": "", "label": "benign"})  # rejected: no id
    rows.append({"request_id": "never-scored", "label": "benign"})  # rejected: no result
    path = tmp_path / "truth.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["request_id", "label"])
        writer.writeheader()
        writer.writerows(rows)

    done = cli(sqlite_url, "feedback", str(path))
    assert done.returncode == 0, done.stderr
    assert "102 rows read, 100 stored, 2 rejected" in done.stdout
    again = cli(sqlite_url, "feedback", str(path))  # the same file twice: still 100 labels
    assert again.returncode == 0

    since = utcnow().replace(year=2000)
    [row] = accuracy_by_version(engine, since)
    assert (row["labelled"], row["correct"], row["accuracy"]) == (100, 70, 0.7)
    report = json.loads(cli(sqlite_url, "drift", "demo", "--json").stdout)
    assert report["accuracy"]["accuracy"] == 0.7

    from scoring.status_snapshot import quality

    [shown] = quality(engine, 60)  # what `scoring status` shows
    assert shown["accuracy"] == 0.7 and shown["drift"]["drifted"] is False

    registry = CollectorRegistry()
    registry.register(DriftCollector(from_database(engine)))
    text = generate_latest(registry).decode()
    assert 'scoring_model_accuracy{model="demo",version="1"} 0.7' in text
    assert 'scoring_drift_detected{model="demo",version="1"} 0.0' in text
