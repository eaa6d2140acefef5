"""Ground truth that arrives after scoring: check a feedback record and store it.

A record is `{"request_id": ..., "label": ..., "model": ...}`; `model` may be left out
when the request was scored by one model only (it is then looked up in score_results).
Feedback is upserted on (request_id, model): a later label replaces an earlier one, so
a file or topic read twice stores nothing twice. `scoring feedback FILE` and the Kafka
consumers of the feedback topic (workers/sources/kafka/feedback.py) both come here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from schemas.tables import Feedback, ScoreResult, table_of, utcnow

MAX_ID = 128
MAX_LABEL = 256


@dataclass
class FeedbackCounts:
    """What happened to the records of one call (reasons: the first few, for the user).
    `unowned`: (index in the call's rows, reason) of every row rejected because no single
    model scored its request, so that a caller can park those records (not merged by add)."""

    stored: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    unowned: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < 10:
            self.reasons.append(reason)

    def add(self, other: FeedbackCounts) -> None:
        self.stored += other.stored
        self.rejected += other.rejected
        self.reasons = (self.reasons + other.reasons)[:10]


def check_record(
    record: Any, default_model: str | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """A feedback row, or None and why the record is not one."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    request_id, label = record.get("request_id"), record.get("label")
    model = record.get("model") or record.get("model_name") or default_model
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID:
        return None, f"request_id must be a string of 1..{MAX_ID} characters"
    if isinstance(label, bool):  # as JSON writes it (and outputs->>'label' reads it)
        label = "true" if label else "false"
    elif isinstance(label, int | float):  # labels are compared as text with outputs["label"]
        label = str(label)
    if not isinstance(label, str) or not label or len(label) > MAX_LABEL:
        return (
            None,
            f"{request_id}: label must be a string (or number) of 1..{MAX_LABEL} characters",
        )
    if model is not None and (not isinstance(model, str) or len(model) > 128):
        return None, f"{request_id}: model must be a model name"
    return {"request_id": request_id, "model_name": model, "label": label}, None


def store_feedback(engine: Engine, rows: list[dict[str, Any]]) -> FeedbackCounts:
    """Upsert checked rows in one transaction; rows without a model get the one model
    that scored their request, or are rejected when none (or several) did."""
    counts = FeedbackCounts()
    with engine.begin() as conn:
        missing = [r["request_id"] for r in rows if r["model_name"] is None]
        owners = _owners(conn, missing) if missing else {}
        ready: dict[tuple[str, str], dict[str, Any]] = {}
        for index, row in enumerate(rows):
            model = row["model_name"]
            if model is None:
                found = owners.get(row["request_id"], set())
                if len(found) != 1:
                    what = "no result" if not found else f"results of {len(found)} models"
                    reason = f"{row['request_id']}: {what} for this request_id; name the model"
                    counts.reject(reason)
                    counts.unowned.append((index, reason))
                    continue
                model = next(iter(found))
            ready[(row["request_id"], model)] = {
                **row,
                "model_name": model,
                "received_at": utcnow(),
            }
        if ready:
            _upsert(conn, list(ready.values()))
        counts.stored = len(ready)
    return counts


def _owners(conn: Any, request_ids: Iterable[str]) -> dict[str, set[str]]:
    r = table_of(ScoreResult).c
    out: dict[str, set[str]] = {}
    ids = sorted(set(request_ids))
    for start in range(0, len(ids), 1000):
        query = select(r.request_id, r.model_name).where(
            r.request_id.in_(ids[start : start + 1000])
        )
        for request_id, model in conn.execute(query.distinct()):
            out.setdefault(request_id, set()).add(model)
    return out


def _upsert(conn: Any, rows: list[dict[str, Any]]) -> None:
    table = table_of(Feedback)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), 1000):
        stmt = insert(table).values(rows[start : start + 1000])
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["request_id", "model_name"],
                set_={"label": stmt.excluded.label, "received_at": stmt.excluded.received_at},
            )
        )
