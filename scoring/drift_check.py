"""`scoring drift`: compare what a version scored in a window with its reference.

The workers store each model call's inputs and predicted labels on the version's fixed
bins (`batch_metrics.summary`, see schemas/drift_bins.py); here the window's summaries are
added up and compared with the held-out reference: the population stability index (PSI)
per feature and on predicted labels, and a two-sample Kolmogorov-Smirnov test on the
binned distributions (scipy's asymptotic distribution). Binning can only hide part of a
difference, so the binned KS statistic is a lower bound of the raw one. Accuracy on the
ground truth that arrived (`feedback`) is reported beside them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from schemas import drift_bins
from schemas.monitoring import accuracy_by_version
from schemas.settings import DriftSettings
from schemas.tables import BatchMetric, DriftReport, ModelVersion, table_of, utcnow

_FLOOR = 1e-4  # an empty bin counts as this share, so that PSI stays finite


def psi(expected: list[int] | np.ndarray, actual: list[int] | np.ndarray) -> float:
    """Population stability index of `actual` against `expected` (counts per bin)."""
    e = _shares(expected)
    a = _shares(actual)
    return float(np.sum((a - e) * np.log(a / e)))


def _shares(counts: list[int] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.full(c.shape, 1 / max(len(c), 1))
    p = np.maximum(p, _FLOOR)
    return p / p.sum()


def ks_binned(expected: list[int], actual: list[int]) -> tuple[float, float]:
    """Two-sample KS statistic from binned counts (the largest gap between the two
    cumulative distributions at a bin edge) and its asymptotic p-value."""
    from scipy.stats import kstwobign

    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    n, m = e.sum(), a.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0
    stat = float(np.max(np.abs(np.cumsum(e) / n - np.cumsum(a) / m)))
    effective = n * m / (n + m)
    return stat, float(kstwobign.sf(stat * math.sqrt(effective)))


def window_summary(engine: Engine, name: str, version: int, since: datetime) -> dict[str, Any]:
    """The summaries of every call of `name` v`version` stored since `since`, added up
    (streamed: a long window is never held in memory as rows)."""
    m = table_of(BatchMetric).c
    query = (
        select(m.summary)
        .where(m.model_name == name, m.model_version == version, m.created_at >= since)
        .where(m.summary.is_not(None))
        .execution_options(yield_per=2000)
    )
    total: dict[str, Any] = drift_bins.merge([])
    with engine.connect() as conn:
        for part in conn.execute(query).scalars().partitions():
            total = drift_bins.merge([total, *part])
    return total


def compare(
    reference: dict[str, Any], window: dict[str, Any], limits: DriftSettings
) -> dict[str, Any]:
    """Per feature and on predicted labels: PSI, KS and whether it drifted."""
    features = {}
    for name, feature in reference.get("features", {}).items():
        actual = window["bins"].get(name)
        if actual is None or len(actual) != len(feature["counts"]) or sum(actual) == 0:
            continue
        value = psi(feature["counts"], actual)
        stat, p = ks_binned(feature["counts"], actual)
        drifted = value >= limits.psi_threshold or (
            p < limits.ks_alpha and stat >= limits.ks_min_statistic
        )
        features[name] = {
            "psi": round(value, 6),
            "ks": round(stat, 6),
            "ks_p": p,
            "drifted": drifted,
        }
    base = reference.get("predictions") or reference.get("labels") or {}
    prediction = None
    if base and window["labels"]:
        labels = sorted(set(base) | set(window["labels"]))
        value = psi([base.get(k, 0) for k in labels], [window["labels"].get(k, 0) for k in labels])
        prediction = {
            "psi": round(value, 6),
            "against": "predictions" if reference.get("predictions") else "labels",
            "reference": {k: base.get(k, 0) for k in labels},
            "window": {k: window["labels"].get(k, 0) for k in labels},
            "drifted": value >= limits.psi_threshold,
        }
    return {"features": features, "prediction": prediction}


def check(
    engine: Engine,
    record: ModelVersion,
    window: timedelta,
    limits: DriftSettings,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Compare `record`'s window with its reference, store the report in drift_reports,
    and return it. `drifted` is None when the window has too few rows for a verdict."""
    end = now or utcnow()
    start = end - window
    reference = record.reference_stats or {}
    if not reference.get("features"):
        raise ValueError(
            f"{record.name} v{record.version} has no drift reference: register it from an "
            "artifact whose model.json has a validation_set"
        )
    summary = window_summary(engine, record.name, record.version, start)
    stats = compare(reference, summary, limits)
    accuracy = accuracy_by_version(engine, start, record.name, record.version)
    stats["accuracy"] = accuracy[0] if accuracy else None
    stats["rows"] = summary["n"]
    stats["thresholds"] = limits.model_dump()
    enough = summary["n"] >= limits.min_rows
    low_accuracy = bool(
        limits.min_accuracy is not None
        and stats["accuracy"]
        and stats["accuracy"]["accuracy"] is not None
        and stats["accuracy"]["accuracy"] < limits.min_accuracy
    )
    drifted = (
        any(f["drifted"] for f in stats["features"].values())
        or bool(stats["prediction"] and stats["prediction"]["drifted"])
        or low_accuracy
    )
    verdict: bool | None = drifted if enough else None
    stats["verdict"] = {
        "drifted": verdict,
        "low_accuracy": low_accuracy,
        "why": None
        if enough
        else f"{summary['n']} rows in the window, fewer than {limits.min_rows}",
    }
    with engine.begin() as conn:
        conn.execute(
            table_of(DriftReport).insert(),
            {
                "model_name": record.name,
                "model_version": record.version,
                "window_start": start,
                "window_end": end,
                "feature_stats": stats,
                "drifted": bool(verdict),
                "created_at": end,
            },
        )
    return {
        "model": record.name,
        "version": record.version,
        "window_start": start,
        "window_end": end,
        **stats,
    }
