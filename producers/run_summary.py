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
    # Rows left out because an earlier row of the input has their id (scored once, there);
    # `duplicates` are rows whose result an earlier run stored. Rows read from the input
    # = enqueued + rejected + duplicate_ids; enqueued = results + duplicates + lost.
    duplicate_ids: int
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
    """Read the run's results back from the database; nothing here trusts the producer.

    Rows are counted in SQL, grouped by status and timestamps (a chunk's rows share theirs)
    and by (predicted, true) label, so a large run is not read back row by row."""
    table = table_of(ScoreResult)
    mine = table.c.bulk_run_id == run_id
    with session_scope(engine) as session:
        run = session.get(BulkRun, run_id)
        if run is None:
            raise ValueError(f"no bulk run {run_id!r}")
        groups = session.execute(
            select(table.c.status, table.c.enqueued_at, table.c.scored_at, func.count())
            .where(mine)
            .group_by(table.c.status, table.c.enqueued_at, table.c.scored_at)
        ).all()
        predicted = table.c.outputs["label"].as_string()
        truth = table.c.metadata["label"].as_string()
        labels = session.execute(
            select(predicted, truth, func.count())
            .where(mine, table.c.status == "ok", truth.is_not(None))
            .group_by(predicted, truth)
        ).all()
        duplicates = (
            session.scalar(
                select(func.count())
                .select_from(BulkDuplicate)
                .where(col(BulkDuplicate.run_id) == run_id)
            )
            or 0
        )
    statuses: Counter[str] = Counter()
    for status, _, _, n in groups:
        statuses[status] += n
    stored = sum(statuses.values())
    timed = [g for g in groups if g.enqueued_at is not None]
    latencies = np.repeat(
        np.array([(g.scored_at - g.enqueued_at).total_seconds() * 1000 for g in timed]),
        np.array([g[3] for g in timed], dtype=np.int64),
    )
    last = max((g.scored_at for g in groups), default=run.started_at)
    seconds = max((last - run.started_at).total_seconds(), 1e-9)
    return RunSummary(
        run_id=run_id,
        model=f"{run.model_name} v{run.model_version}",
        enqueued=run.enqueued_rows,
        rejected=run.rejected_rows,
        duplicate_ids=max(0, (run.total_rows or 0) - run.enqueued_rows - run.rejected_rows),
        ok=statuses["ok"],
        invalid=statuses["invalid"],
        error=statuses["error"],
        expired=statuses["expired"],
        duplicates=duplicates,
        lost=run.enqueued_rows - stored - duplicates,
        seconds=round(seconds, 3),
        rows_per_s=round(stored / seconds, 1),
        p50_latency_ms=_pct(latencies, 50),
        p99_latency_ms=_pct(latencies, 99),
        accuracy=_accuracy(labels),
    )


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values.size else None


def _accuracy(labels: Sequence[Any]) -> float | None:
    """Share of labelled ok rows whose predicted label is the true one."""
    total = sum(n for _, _, n in labels)
    right = sum(n for predicted, truth, n in labels if predicted == truth)
    return round(right / total, 4) if total else None
