"""The rows a scored batch writes: one `score_results` row per request (of a single
request, or of each row of a bulk chunk), with its lineage, and one `batch_metrics` row
per model call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas import names as c
from schemas.tables import utcnow
from schemas.wire import ScoreRequest
from workers.core.chunks import CheckedChunk
from workers.core.input_digest import chunk_digests, chunk_inputs, digest, storable
from workers.runtime.loaded import LoadedModel
from workers.sources.base import WorkItem


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


def request_row(
    item: WorkItem,
    request: ScoreRequest,
    model: LoadedModel,
    status: str,
    worker: str,
    retain_inputs: bool,
    **fields: Any,
) -> dict[str, Any]:
    """The result row of a single request (its inputs kept only with `retain_inputs`)."""
    inputs = request.inputs
    return item_row(
        item,
        worker,
        request.request_id,
        request.metadata or None,
        model,
        status,
        inputs_sha256=digest(inputs, model.input_schema),
        inputs=storable(inputs) if retain_inputs else None,
        **fields,
    )


def chunk_rows(
    item: WorkItem,
    checked: CheckedChunk,
    model: LoadedModel,
    indices: Any,
    status: str,
    worker: str,
    retain_inputs: bool,
    *,
    error: str | None = None,
    scored: list[tuple[dict[str, Any] | None, str | None]] | None = None,
    batch_id: str | None = None,
    began: datetime | None = None,
    inference_ms: float | None = None,
) -> list[dict[str, Any]]:
    """Result rows for rows `indices` of a chunk: with `scored` (outputs or a model
    error, in the same order) for scored rows, else `status` with `error`."""
    if scored is None:
        scored = [(None, error)] * len(indices)
    # One row built in full, then copied per request: the lineage is the chunk's own.
    shared = item_row(
        item, worker, "", None, model, status, batch_id=batch_id, began=began,
        inference_ms=inference_ms,
    )  # fmt: skip
    out = []
    digests = chunk_digests(item.payload.rows, checked, model.input_schema)
    kept = (
        chunk_inputs(item.payload.rows, model.input_schema, indices)
        if retain_inputs
        else [None] * len(indices)
    )
    for index, (outputs, problem), sent in zip(indices, scored, kept, strict=True):
        label = checked.labels[index]
        out.append(
            {
                **shared,
                "request_id": checked.ids[index],
                "inputs_sha256": digests[index],
                "inputs": storable(sent),
                "metadata": {"label": label} if label is not None else None,
                "outputs": outputs,
                "error": problem,
                "status": c.STATUS_ERROR if status == c.STATUS_OK and problem else status,
            }
        )
    return out


def item_row(
    item: WorkItem,
    worker: str,
    request_id: str,
    metadata: dict[str, Any] | None,
    model: LoadedModel,
    status: str,
    **fields: Any,
) -> dict[str, Any]:
    """A result row with the lineage `item` carries (source, bulk run and chunk, when it
    was enqueued)."""
    return result_row(
        request_id=request_id,
        metadata=metadata,
        model=model,
        status=status,
        worker=worker,
        source=item.source,
        bulk_run_id=item.bulk_run_id,
        bulk_chunk=item.bulk_chunk,
        enqueued_at=item.enqueued_at,
        **fields,
    )


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
