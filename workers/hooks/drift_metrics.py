"""Drift and accuracy as Prometheus gauges: the latest `scoring drift` report of each
version (PSI per feature and on predicted labels, whether it drifted) and the accuracy on
late ground truth, read from the database when scraped (at most every `ttl_s`).

Workers export them next to their own metrics, so that the alert rules need no other
exporter; `scoring drift --prom-file` writes the same names for a textfile collector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Entries = dict[str, list[dict[str, Any]]]  # "drift": reports, "accuracy": per version


def _families() -> dict[str, GaugeMetricFamily]:
    version = ["model", "version"]
    return {
        "psi": GaugeMetricFamily(
            "scoring_drift_psi",
            "Population stability index of a feature in the latest drift report.",
            labels=[*version, "feature"],
        ),
        "prediction": GaugeMetricFamily(
            "scoring_drift_prediction_psi",
            "PSI of the predicted labels in the latest drift report.",
            labels=version,
        ),
        "detected": GaugeMetricFamily(
            "scoring_drift_detected",
            "1 when the latest drift report crossed a threshold, else 0.",
            labels=version,
        ),
        "accuracy": GaugeMetricFamily(
            "scoring_model_accuracy",
            "Share of results with ground truth (feedback) that the model got right.",
            labels=version,
        ),
        "labelled": GaugeMetricFamily(
            "scoring_feedback_labelled_results",
            "Results with ground truth (feedback) in the accuracy window.",
            labels=version,
        ),
    }


class DriftCollector(Collector):
    """Gauges from `read()`: {"drift": [report...], "accuracy": [row...]}."""

    def __init__(self, read: Callable[[], Entries], ttl_s: float = 0.0) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self._cached: tuple[float, Entries] | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(_families().values())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = _families()
        try:
            entries = self._entries()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.debug("drift and accuracy not read: %s", exc)
            return list(families.values())
        for report in entries.get("drift", []):
            key = [str(report["model"]), str(report["version"])]
            stats = report.get("stats") or {}
            for feature, s in (stats.get("features") or {}).items():
                families["psi"].add_metric([*key, feature], float(s["psi"]))
            if stats.get("prediction"):
                families["prediction"].add_metric(key, float(stats["prediction"]["psi"]))
            families["detected"].add_metric(key, 1.0 if report.get("drifted") else 0.0)
        for row in entries.get("accuracy", []):
            key = [str(row["model"]), str(row["version"])]
            families["labelled"].add_metric(key, float(row["labelled"]))
            if row["accuracy"] is not None:
                families["accuracy"].add_metric(key, float(row["accuracy"]))
        return list(families.values())

    def _entries(self) -> Entries:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.ttl_s:
            self._cached = (now, self.read())
        return self._cached[1]


def from_database(
    engine: Any,
    drift_within: timedelta = timedelta(days=1),
    accuracy_within: timedelta = timedelta(hours=1),
) -> Callable[[], Entries]:
    """A reader of the latest drift reports (made within `drift_within`) and the accuracy
    of results scored within `accuracy_within`."""
    from schemas.monitoring import accuracy_by_version, latest_drift
    from schemas.tables import utcnow

    def read() -> Entries:
        now = utcnow()
        return {
            "drift": latest_drift(engine, now - drift_within),
            "accuracy": accuracy_by_version(engine, now - accuracy_within),
        }

    return read


def drift_gauges(registry: CollectorRegistry, reports: list[dict[str, Any]]) -> None:
    """Register the gauges of `reports` (as `scoring drift` returns them) on `registry`."""
    drift = [
        {
            "model": r["model"],
            "version": r["version"],
            "stats": r,
            "drifted": r["verdict"]["drifted"],
        }
        for r in reports
    ]
    accuracy = [r["accuracy"] for r in reports if r.get("accuracy")]
    registry.register(DriftCollector(lambda: {"drift": drift, "accuracy": accuracy}))
