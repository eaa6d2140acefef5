"""The rows a scored batch writes: one `score_results` row per request, with its lineage,
and one `batch_metrics` row per model call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.tables import utcnow
from workers.runtime.loaded import LoadedModel


def result_row(
    *,
    request_id: str,
    metadata: dict[str, Any] | None,
    model: LoadedModel,
    status: str,
    worker: str,
    source: str,
    bulk_run_id: str | None,
    enqueued_at: datetime | None,
    outputs: dict[str, Any] | None = None,
    error: str | None = None,
    batch_id: str | None = None,
    began: datetime | None = None,
    inference_ms: float | None = None,
    scored_at: datetime | None = None,
    bulk_chunk: int | None = None,
    inputs_sha256: str | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One score_results row; `began` is when its model call started (for queue_ms)."""
    return {
        "request_id": request_id,
        "model_name": model.name,
        "model_version": model.version,
        "artifact_sha256": model.sha256,
        "outputs": outputs,
        "status": status,
        "error": error,
        "source": source,
        "bulk_run_id": bulk_run_id,
        "bulk_chunk": bulk_chunk,
        "metadata": metadata,
        "inputs_sha256": inputs_sha256,
        "inputs": inputs,
        "enqueued_at": enqueued_at,
        "scored_at": scored_at or utcnow(),
        "queue_ms": ms_between(enqueued_at, began) if began else None,
        "inference_ms": inference_ms,
        "batch_id": batch_id,
        "backend": model.backend,
        "device": model.device,
        "worker": worker,
    }


def metric_row(
    model: LoadedModel,
    worker: str,
    batch_id: str,
    source_mix: dict[str, int],
    waits: list[float | None],
    inference_ms: float,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The batch_metrics row of one model call over sum(source_mix) requests, with the
    call's drift summary (workers/hooks/drift.py)."""
    size = sum(source_mix.values())
    known = [w for w in waits if w is not None]
    return {
        "batch_id": batch_id,
        "worker": worker,
        "device": model.device,
        "model_name": model.name,
        "model_version": model.version,
        "backend": model.backend,
        "source_mix": source_mix,
        "batch_size": size,
        "queue_wait_ms": sum(known) / len(known) if known else 0.0,
        "inference_ms": inference_ms,
        "rows_per_s": size / max(inference_ms / 1000, 1e-9),
        "summary": summary,
        "created_at": utcnow(),
    }


def ms_between(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else (end - start).total_seconds() * 1000
