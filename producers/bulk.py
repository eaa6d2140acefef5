"""Bulk jobs: stream a file into chunked task messages, record the run, follow its progress."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from celery import Celery
from sqlalchemy import Engine, func, select
from sqlmodel import col

from producers.bulk_columns import read_slices, typed_chunks
from producers.file_readers import coerce_row, detect_format, iter_rows
from producers.redis_producer import RedisProducer
from schemas import names as c
from schemas.chunks import max_label_chars
from schemas.db import session_scope
from schemas.tables import BulkDuplicate, BulkRun, ModelVersion, ScoreResult, utcnow
from schemas.wire import DEFAULT_MAX_METADATA_BYTES, usable_request_id

MAX_REJECTIONS_KEPT = 20
TYPED_BLOCK_CHUNKS = 16  # chunks typed by Arrow in one pass


@dataclass(frozen=True)
class BulkOptions:
    chunk_size: int = 256
    id_column: str | None = None
    label_column: str | None = None
    deadline_ms: int | None = None
    # SCORING_MAX_METADATA_BYTES: a label column longer than fits sends its chunk as rows.
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES


def enqueue_file(
    app: Celery,
    engine: Engine,
    path: Path,
    model: ModelVersion,
    options: BulkOptions,
    on_chunk: Callable[[int], None] | None = None,
) -> BulkRun:
    """Record a run, then publish the file's rows in chunks of `chunk_size` rows.

    Every row goes out, good or bad (the worker records the reason for a bad one), except
    rows that cannot even be keyed (a missing or unusable id, a CSV line with the wrong
    number of fields): those are counted as rejected on the run with their reasons.
    """
    run = BulkRun(
        id=uuid.uuid4().hex[:12],
        input=str(path),
        model_name=model.name,
        model_version=model.version,
        status=c.RUN_ENQUEUING,
    )
    with session_scope(engine) as session:
        session.add(run)
    producer = RedisProducer(app)
    rejections: list[str] = []
    enqueued = 0
    try:
        for message in _messages(path, model, options, run.id, rejections):
            if isinstance(message, pa.RecordBatch):
                enqueued += producer.send_chunk(
                    message,
                    model=model.name,
                    model_version=model.version,
                    deadline_ms=options.deadline_ms,
                    source=c.SOURCE_BULK,
                    bulk_run_id=run.id,
                )
            else:
                enqueued += producer.send(
                    message,
                    per_message=options.chunk_size,
                    source=c.SOURCE_BULK,
                    bulk_run_id=run.id,
                    validate=False,
                )
            if on_chunk:
                on_chunk(enqueued)
    except BaseException as exc:
        _finish_enqueue(engine, run, enqueued, rejections, c.RUN_FAILED, repr(exc))
        raise
    return _finish_enqueue(engine, run, enqueued, rejections, c.RUN_RUNNING, None)


def _messages(
    path: Path, model: ModelVersion, options: BulkOptions, run_id: str, rejections: list[str]
) -> Iterator[pa.RecordBatch | list[dict[str, Any]]]:
    """Chunks of `chunk_size` rows: by column where the file is CSV or Parquet and Arrow
    types a chunk exactly as the row path would, else as request dicts."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        numbered = enumerate(iter_rows(path, fmt), start=1)
        yield from _chunks(_requests(numbered, model, options, run_id, rejections), options)
        return
    schema = dict(model.input_schema)
    wanted = [*schema, *(c for c in (options.id_column, options.label_column) if c)]
    columns = list(dict.fromkeys(wanted))
    label_chars = max_label_chars(options.max_metadata_bytes)
    typing = (schema, run_id, options.id_column, options.label_column, label_chars)
    for block in read_slices(
        path, fmt, columns, TYPED_BLOCK_CHUNKS * options.chunk_size, rejections
    ):
        for chunk in typed_chunks(block, options.chunk_size, *typing):
            if isinstance(chunk, pa.RecordBatch):
                yield chunk
                continue
            numbered = enumerate(chunk.rows.to_pylist(), start=chunk.first)
            requests = list(_requests(numbered, model, options, run_id, rejections))
            if requests:
                yield requests


def _requests(
    rows: Iterator[tuple[int, dict[str, Any]]],
    model: ModelVersion,
    options: BulkOptions,
    run_id: str,
    rejections: list[str],
) -> Iterator[dict[str, Any]]:
    for number, row in rows:
        if options.id_column:
            raw = row.get(options.id_column)
            request_id = None if raw is None else str(raw)
        else:
            request_id = f"{run_id}:{number}"
        problem = row.get("__error__") or (
            None
            if request_id is not None and usable_request_id(request_id)
            else f"row {number}: unusable id {request_id!r}"
        )
        if problem:
            rejections.append(problem)
            continue
        request: dict[str, Any] = {
            "request_id": request_id,
            "model": model.name,
            "model_version": model.version,
            "inputs": coerce_row(row, model.input_schema),
        }
        if options.label_column and row.get(options.label_column) is not None:
            request["metadata"] = {"label": str(row[options.label_column])}
        if options.deadline_ms:
            request["deadline_ms"] = options.deadline_ms
        yield request


def _chunks(
    requests: Iterator[dict[str, Any]], options: BulkOptions
) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for request in requests:
        chunk.append(request)
        if len(chunk) == options.chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finish_enqueue(
    engine: Engine,
    run: BulkRun,
    enqueued: int,
    rejections: list[str],
    status: str,
    error: str | None,
) -> BulkRun:
    with session_scope(engine) as session:
        row = session.get(BulkRun, run.id)
        assert row is not None
        row.enqueued_rows, row.rejected_rows = enqueued, len(rejections)
        row.total_rows = enqueued + len(rejections)
        row.status, row.enqueued_at = status, utcnow()
        kept = rejections[:MAX_REJECTIONS_KEPT]
        row.error = error or ("\n".join(kept) if kept else None)
        session.add(row)
    return row


def progress(engine: Engine, run_id: str) -> tuple[int, int]:
    """(rows with a result, rows expected): duplicates of earlier runs count as done."""
    with session_scope(engine) as session:
        run = session.get(BulkRun, run_id)
        if run is None:
            raise ValueError(f"no bulk run {run_id!r}; see `scoring status`")
        stored = session.scalar(
            select(func.count())
            .select_from(ScoreResult)
            .where(col(ScoreResult.bulk_run_id) == run_id)
        )
        dupes = session.scalar(
            select(func.count())
            .select_from(BulkDuplicate)
            .where(col(BulkDuplicate.run_id) == run_id)
        )
        done = (stored or 0) + (dupes or 0)
        if run.status == c.RUN_RUNNING and done >= run.enqueued_rows:
            run.status, run.finished_at = c.RUN_DONE, utcnow()
            session.add(run)
        return done, run.enqueued_rows


def wait(
    engine: Engine,
    run_id: str,
    on_progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.5,
    stall_timeout_s: float | None = None,
) -> bool:
    """Block until every enqueued row has a result; False if progress stalls that long."""
    last_done, last_change = -1, time.monotonic()
    while True:
        done, total = progress(engine, run_id)
        if on_progress:
            on_progress(done, total)
        if done >= total:
            return True
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif stall_timeout_s and time.monotonic() - last_change > stall_timeout_s:
            return False
        time.sleep(poll_s)
