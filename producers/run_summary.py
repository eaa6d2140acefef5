"""What a finished bulk run did: counts by status, lost rows, speed, latency, accuracy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlmodel import col

from schemas.db import session_scope
from schemas.tables import BulkDuplicate, BulkRun, ScoreResult, table_of


@dataclass
class RunSummary:
    run_id: str
    model: str
    enqueued: int
    rejected: int
    ok: int
    invalid: int
    error: int
    expired: int
    duplicates: int
    lost: int
    seconds: float
    rows_per_s: float
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(engine: Engine, run_id: str) -> RunSummary:
    """Read the run's results back from the database; nothing here trusts the producer."""
    table = table_of(ScoreResult)
    with session_scope(engine) as session:
        run = session.get(BulkRun, run_id)
        if run is None:
            raise ValueError(f"no bulk run {run_id!r}")
        rows = session.execute(
            select(
                table.c.status,
                table.c.enqueued_at,
                table.c.scored_at,
                table.c.outputs,
                table.c.metadata,
            ).where(table.c.bulk_run_id == run_id)
        ).all()
        duplicates = (
            session.scalar(
                select(func.count())
                .select_from(BulkDuplicate)
                .where(col(BulkDuplicate.run_id) == run_id)
            )
            or 0
        )
    statuses = Counter(r.status for r in rows)
    latencies = np.array(
        [
            (r.scored_at - r.enqueued_at).total_seconds() * 1000
            for r in rows
            if r.enqueued_at is not None
        ]
    )
    last = max((r.scored_at for r in rows), default=run.started_at)
    seconds = max((last - run.started_at).total_seconds(), 1e-9)
    return RunSummary(
        run_id=run_id,
        model=f"{run.model_name} v{run.model_version}",
        enqueued=run.enqueued_rows,
        rejected=run.rejected_rows,
        ok=statuses["ok"],
        invalid=statuses["invalid"],
        error=statuses["error"],
        expired=statuses["expired"],
        duplicates=duplicates,
        lost=run.enqueued_rows - len(rows) - duplicates,
        seconds=round(seconds, 3),
        rows_per_s=round(len(rows) / seconds, 1),
        p50_latency_ms=_pct(latencies, 50),
        p99_latency_ms=_pct(latencies, 99),
        accuracy=_accuracy(rows),
    )


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values.size else None


def _accuracy(rows: Sequence[Any]) -> float | None:
    labelled = [
        (r.outputs or {}).get("label") == (r.metadata or {}).get("label")
        for r in rows
        if r.status == "ok" and (r.metadata or {}).get("label") is not None
    ]
    return round(sum(labelled) / len(labelled), 4) if labelled else None
