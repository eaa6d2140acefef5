"""The result sink on real PostgreSQL: COPY-staged batch upserts stay idempotent, drop
duplicates within a batch, count bulk duplicates, and refuse bad rows without harm."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text

from schemas.db import make_engine
from schemas.tables import utcnow
from workers.core.sink import ResultSink, SinkUnavailable

pytestmark = pytest.mark.integration


def rows(n: int, prefix: str = "r", run: str | None = "run-a", **extra: Any) -> list[dict]:
    now = utcnow()
    return [
        {
            "request_id": f"{prefix}-{i}",
            "model_name": "demo",
            "model_version": 1,
            "artifact_sha256": "a" * 64,
            "outputs": {"label": "benign", "score": 0.9},
            "status": "ok",
            "error": None,
            "source": "bulk" if run else "redis",
            "bulk_run_id": run,
            "metadata": {"tenant": "t", "note": "quote ' and tab \t and newline \n"},
            "enqueued_at": now,
            "scored_at": now,
            "queue_ms": 1.5,
            "inference_ms": 0.5,
            "batch_id": "b1",
            "backend": "eager",
            "device": "cpu",
            "worker": "w",
            **extra,
        }
        for i in range(n)
    ]


def metric(size: int) -> dict[str, Any]:
    return {
        "batch_id": "b1",
        "worker": "w",
        "device": "cpu",
        "model_name": "demo",
        "model_version": 1,
        "backend": "eager",
        "source_mix": {"bulk": size},
        "batch_size": size,
        "queue_wait_ms": 1.0,
        "inference_ms": 1.0,
        "rows_per_s": 1.0,
        "created_at": utcnow(),
    }


def counts(url: str) -> tuple[int, int, int]:
    with make_engine(url).connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("score_results", "batch_metrics", "bulk_duplicates")
        )


def test_a_batch_is_stored_once_with_its_values_intact(pg_url: str) -> None:
    sink = ResultSink(make_engine(pg_url))
    batch = rows(300)
    assert sink.write(batch, [metric(300)]) == 300
    assert sink.write(batch, []) == 0  # redelivered: nothing new
    assert counts(pg_url) == (300, 1, 0)  # same run again: not a duplicate of another run
    with make_engine(pg_url).connect() as conn:
        stored = conn.execute(
            text("SELECT outputs, metadata, enqueued_at, error FROM score_results LIMIT 1")
        ).one()
    assert stored.outputs == {"label": "benign", "score": 0.9}
    assert stored.metadata == batch[0]["metadata"]
    assert isinstance(stored.enqueued_at, datetime) and stored.enqueued_at.utcoffset() is not None
    assert stored.error is None


def test_duplicates_within_a_batch_are_dropped_and_other_runs_counted(pg_url: str) -> None:
    sink = ResultSink(make_engine(pg_url))
    first = rows(10)
    assert sink.write(first + first[:4], []) == 10
    again = rows(10, run="run-b")
    assert sink.write(again + rows(5, prefix="new", run="run-b"), []) == 5
    assert counts(pg_url) == (15, 0, 10)
    with make_engine(pg_url).connect() as conn:
        existing = conn.execute(
            text("SELECT DISTINCT run_id, existing_run_id FROM bulk_duplicates")
        ).all()
    assert existing == [("run-b", "run-a")]


def test_a_refused_batch_stores_nothing_and_the_next_one_goes_in(pg_url: str) -> None:
    sink = ResultSink(make_engine(pg_url), retries=1, backoff_s=0.01)
    bad = rows(3) + rows(1, prefix="x" * 200)  # request_id longer than the column
    with pytest.raises(SinkUnavailable):
        sink.write(bad, [metric(4)])  # the first write of a connection: staging rolled back
    assert counts(pg_url) == (0, 0, 0)
    assert sink.write(rows(3), [metric(3)]) == 3
    assert counts(pg_url) == (3, 1, 0)


def test_naive_timestamps_are_refused_not_guessed(pg_url: str) -> None:
    sink = ResultSink(make_engine(pg_url))
    with pytest.raises(ValueError, match="timezone"):
        sink.write(rows(2, enqueued_at=datetime(2024, 1, 1)), [])
    assert counts(pg_url) == (0, 0, 0)


def test_a_role_without_temporary_tables_still_writes(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        user, database = conn.execute(text("SELECT current_user, current_database()")).one()
        conn.execute(text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC, "{user}"'))
        conn.commit()
    engine.dispose()  # new connections see the revoked privilege
    sink = ResultSink(make_engine(pg_url))
    assert sink.write(rows(5), [metric(5)]) == 5
    assert sink.write(rows(5) + rows(2, prefix="more"), []) == 2
    assert counts(pg_url) == (7, 1, 0)
    assert "using multi-row inserts" in caplog.text
