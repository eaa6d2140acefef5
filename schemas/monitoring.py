"""Read-side queries of what was scored, shared by `scoring status`, `scoring drift`,
`scoring report` and the workers' Prometheus metrics: accuracy from late ground truth
(`feedback` joined to `score_results` by request id) and the latest drift reports.
Aggregated in SQL, so a window of millions of results costs one grouped scan."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from schemas import names
from schemas.tables import DriftReport, Feedback, ScoreResult, table_of


def accuracy_by_version(
    engine: Engine, since: datetime, model: str | None = None, version: int | None = None
) -> list[dict[str, Any]]:
    """Per model version: results scored since `since` that have a ground-truth label,
    how many of them the model got right, and the accuracy (None with no labels)."""
    r, f = table_of(ScoreResult).c, table_of(Feedback).c
    correct = func.sum(case((r.outputs["label"].as_string() == f.label, 1), else_=0))
    query = (
        select(r.model_name, r.model_version, func.count(), correct)
        .select_from(
            table_of(Feedback).join(
                table_of(ScoreResult),
                and_(r.request_id == f.request_id, r.model_name == f.model_name),
            )
        )
        .where(r.status == names.STATUS_OK, r.scored_at >= since)
        .group_by(r.model_name, r.model_version)
        .order_by(r.model_name, r.model_version)
    )
    if model is not None:
        query = query.where(r.model_name == model)
    if version is not None:
        query = query.where(r.model_version == version)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "model": name,
            "version": int(v),
            "labelled": int(n),
            "correct": int(ok or 0),
            "accuracy": round(int(ok or 0) / int(n), 6) if n else None,
        }
        for name, v, n, ok in rows
    ]


def latest_drift(engine: Engine, since: datetime) -> list[dict[str, Any]]:
    """The newest drift report of each model version made since `since`."""
    d = table_of(DriftReport).c
    newest = (
        select(func.max(d.id))
        .where(d.created_at >= since)
        .group_by(d.model_name, d.model_version)
        .scalar_subquery()
    )
    query = select(DriftReport).where(table_of(DriftReport).c.id.in_(newest))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            "model": row["model_name"],
            "version": row["model_version"],
            "window_start": row["window_start"],
            "window_end": row["window_end"],
            "drifted": bool(row["drifted"]),
            "stats": row["feature_stats"],
            "created_at": row["created_at"],
        }
        for row in rows
    ]
