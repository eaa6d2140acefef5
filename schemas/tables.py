"""Database tables. Every timestamp is timezone-aware UTC (SQLModel rejects naive ones)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Aware UTC now: what every timestamp column holds."""
    return datetime.now(UTC)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSON, nullable=nullable)


class ModelVersion(SQLModel, table=True):
    """One registered version of a named model: artifact, schema, runtime and lifecycle."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    version: int
    architecture: str = Field(max_length=64)
    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    artifact_uri: str
    artifact_sha256: str = Field(max_length=64)
    input_schema: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    backend: str = Field(default="eager", max_length=32)
    precision: str = Field(default="fp32", max_length=16)
    max_batch_size: int = 256
    max_wait_ms: float = 10.0
    status: str = Field(default="staged", max_length=16, index=True)
    validation_report: dict[str, Any] | None = _json()
    reference_stats: dict[str, Any] | None = _json()
    # What made it: training data identity (sha256 or snapshot name), hyperparameters,
    # training metrics, code version; for a derived version, its source and the recipe.
    training: dict[str, Any] | None = _json()
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None
    retired_at: datetime | None = None


class ModelEvent(SQLModel, table=True):
    """Audit trail of the registry: register, validate, promote, rollback, set-backend,
    auto-backend, derive; by whom (host and user) and, for a promotion, the gate verdict
    that allowed it."""

    __tablename__ = "model_events"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    version: int
    action: str = Field(max_length=32)
    detail: str | None = Field(default=None, sa_type=Text)
    at: datetime = Field(default_factory=utcnow)
    previous_version: int | None = None  # the active version before a promote or rollback
    host: str | None = Field(default=None, max_length=255)
    username: str | None = Field(default=None, max_length=128)
    # The gate summary behind this change: backend, passed, agreement, comparison with
    # the version that was active, and `report_id` (a row of model_validations).
    gate: dict[str, Any] | None = _json()


class ModelValidation(SQLModel, table=True):
    """Every validation report kept as it was produced (model_versions keeps the latest)."""

    __tablename__ = "model_validations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    version: int
    backend: str = Field(max_length=32)
    passed: bool
    active_version: int | None = None  # the version it was compared with, if any
    report: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    at: datetime = Field(default_factory=utcnow)
    host: str | None = Field(default=None, max_length=255)
    username: str | None = Field(default=None, max_length=128)


class ScoreResult(SQLModel, table=True):
    """One scored request, with its lineage. Unique per (request_id, model, version)."""

    __tablename__ = "score_results"
    __table_args__ = (
        UniqueConstraint(
            "request_id", "model_name", "model_version", name="uq_score_results_request"
        ),
        Index("ix_score_results_bulk_run_id", "bulk_run_id"),
    )

    # BIGINT on PostgreSQL; SQLite only auto-increments a plain INTEGER primary key.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    request_id: str = Field(max_length=128)
    model_name: str = Field(max_length=128)
    model_version: int
    artifact_sha256: str | None = Field(default=None, max_length=64)
    outputs: dict[str, Any] | None = _json()
    status: str = Field(max_length=16)
    error: str | None = Field(default=None, sa_type=Text)
    source: str = Field(max_length=16)
    bulk_run_id: str | None = Field(default=None, max_length=64)
    bulk_chunk: int | None = None  # the chunk's number in its bulk run (bulk_chunks.seq)
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    # sha256 of the request's inputs as canonical JSON (workers/core/input_digest.py); the
    # inputs themselves only with SCORING_RETAIN_INPUTS (they may be personal data).
    inputs_sha256: str | None = Field(default=None, max_length=64)
    inputs: dict[str, Any] | None = _json()
    enqueued_at: datetime | None = None
    scored_at: datetime = Field(default_factory=utcnow)
    queue_ms: float | None = None
    inference_ms: float | None = None
    batch_id: str | None = Field(default=None, max_length=64)
    backend: str | None = Field(default=None, max_length=32)
    device: str | None = Field(default=None, max_length=32)
    worker: str | None = Field(default=None, max_length=255)


class BatchMetric(SQLModel, table=True):
    """One row per micro-batch run by a worker."""

    __tablename__ = "batch_metrics"

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(max_length=64, index=True)
    worker: str = Field(max_length=255)
    device: str = Field(max_length=32)
    model_name: str = Field(max_length=128)
    model_version: int
    backend: str = Field(max_length=32)
    source_mix: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    batch_size: int
    queue_wait_ms: float
    inference_ms: float
    rows_per_s: float
    # What the call scored on its version's drift bins (schemas/drift_bins.summarize):
    # per-feature counts and predicted labels, never raw rows. None: no reference.
    summary: dict[str, Any] | None = _json()
    created_at: datetime = Field(default_factory=utcnow, index=True)


class BulkRun(SQLModel, table=True):
    """One bulk job: which file, which model version, how far it got, and what it was
    made from (the input's size and sha256, the options), so that it can be resumed."""

    __tablename__ = "bulk_runs"

    id: str = Field(primary_key=True, max_length=64)
    input: str
    input_bytes: int | None = Field(default=None, sa_type=BigInteger)
    input_sha256: str | None = Field(default=None, max_length=64)
    options: dict[str, Any] | None = _json()
    chunks: int = 0  # chunks published so far (the ledger's rows)
    model_name: str = Field(max_length=128)
    model_version: int
    total_rows: int | None = None
    enqueued_rows: int = 0
    rejected_rows: int = 0
    status: str = Field(default="enqueuing", max_length=16)
    error: str | None = Field(default=None, sa_type=Text)
    started_at: datetime = Field(default_factory=utcnow)
    enqueued_at: datetime | None = None
    finished_at: datetime | None = None


class BulkDuplicate(SQLModel, table=True):
    """A bulk row whose result already existed from an earlier run: counted, not rewritten."""

    __tablename__ = "bulk_duplicates"
    __table_args__ = (
        UniqueConstraint(
            "run_id", "request_id", "model_name", "model_version", name="uq_bulk_duplicates_row"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64, index=True)
    request_id: str = Field(max_length=128)
    model_name: str = Field(max_length=128)
    model_version: int
    existing_run_id: str | None = Field(default=None, max_length=64)
    chunk: int | None = None
    at: datetime = Field(default_factory=utcnow)


class BulkChunk(SQLModel, table=True):
    """The ledger of a bulk run: one row per chunk published, written after the broker
    took it. A resumed run publishes only the chunks missing here; `--wait` publishes
    again a chunk whose rows do not all have results once the run has been silent."""

    __tablename__ = "bulk_chunks"

    run_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)  # the chunk's place in the file, from 0
    rows: int
    # The input rows it spans (1-based data rows; for a query, rows of its result in
    # order). Rows inside the span that are missing from it were rejected or repeated ids.
    first_row: int | None = None
    last_row: int | None = None
    published_at: datetime = Field(default_factory=utcnow)
    republished: int = 0


class DriftReport(SQLModel, table=True):
    """Per-feature drift statistics of one model version over one window."""

    __tablename__ = "drift_reports"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=128, index=True)
    model_version: int
    window_start: datetime
    window_end: datetime
    feature_stats: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    drifted: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    """A ground-truth label that arrived after scoring, joined to results by request_id."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "model_name", name="uq_feedback_request"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=128)
    model_name: str = Field(max_length=128)
    label: str = Field(max_length=256)
    received_at: datetime = Field(default_factory=utcnow)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a model, for bulk statements (SQLModel adds `__table__` at class
    creation, where type checkers cannot see it)."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table
