"""Bulk jobs: stream a file into chunked task messages, record the run and its ledger of
chunks, resume a run cut short, follow its progress and publish again what went missing."""

from __future__ import annotations

import csv
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
from celery import Celery
from sqlalchemy import Engine, func, select
from sqlmodel import col

from producers.bulk_inputs import BulkInput, QueryFailed
from producers.bulk_ledger import Ledger, describe_chunks, incomplete_chunks, mark_republished
from producers.bulk_messages import BulkOptions, numbered_messages
from producers.redis_producer import FAILOVER_RETRY_POLICY, RedisProducer
from schemas import names as c
from schemas.db import session_scope
from schemas.redaction import redact
from schemas.tables import BulkDuplicate, BulkRun, ModelVersion, ScoreResult, utcnow

MAX_REJECTIONS_KEPT = 20
MAX_REPAIRS = 4  # rounds of re-publishing a silent run's incomplete chunks

log = logging.getLogger(__name__)
# What reading a damaged input raises (Arrow's errors are ValueError, OSError or theirs).
READ_ERRORS = (pa.ArrowException, OSError, ValueError, csv.Error)


class UnreadableInput(ValueError):
    """The input cannot be read to its end (a truncated or corrupt Parquet file, a CSV
    that is not UTF-8): the run is marked failed with this message as its error."""

    @property
    def refused_by_database(self) -> bool:
        """The `--from` database refused the connection or the query: a setting or the
        query to fix, not a corrupt input (the cause is kept through the re-raise)."""
        return isinstance(self.__cause__, QueryFailed)


def enqueue_file(
    app: Celery,
    engine: Engine,
    path: Path | BulkInput,
    model: ModelVersion,
    options: BulkOptions,
    on_chunk: Callable[[int], None] | None = None,
) -> BulkRun:
    """Record a run (with the input's size and sha256 and the options, so that it can be
    resumed), then publish the input's rows in chunks of `chunk_size` rows.

    Every row goes out, good or bad (the worker records the reason for a bad one), except
    rows that cannot even be keyed (a missing or unusable id, a CSV line with the wrong
    number of fields): those are counted as rejected on the run with their reasons; and
    a row whose `id_column` value an earlier row of the input has: it is counted as a
    duplicate id (total_rows - enqueued_rows - rejected_rows), with its reason, and only
    the first row with that id is scored (results are unique per id and version).

    Raises UnreadableInput when the input cannot be read to its end; the run is then
    failed, and the chunks published before are on its ledger.
    """
    source = path if isinstance(path, BulkInput) else BulkInput.parse(path)
    size, sha256 = source.identity()
    run = BulkRun(
        id=uuid.uuid4().hex[:12],
        input=source.describe(),
        input_bytes=size,
        input_sha256=sha256,
        options={**asdict(options), "input": {"kind": source.kind, "location": source.location}},
        model_name=model.name,
        model_version=model.version,
        status=c.RUN_ENQUEUING,
    )
    with session_scope(engine) as session:
        session.add(run)
    return _publish(app, engine, run, source, model, options, on_chunk)


def resume(
    app: Celery,
    engine: Engine,
    run_id: str,
    on_chunk: Callable[[int], None] | None = None,
    url: str | None = None,
) -> BulkRun:
    """Publish the chunks of a run that its ledger lacks (a producer killed half-way, a
    failed enqueue), from the same input: refused when it is not the same bytes. A run
    that reads a query needs its database `url` again (it is never recorded)."""
    run, source, model, options = _recorded(engine, run_id, url)
    if run.status == c.RUN_DONE:
        raise ValueError(f"run {run_id} is done: nothing to resume")
    with session_scope(engine) as session:
        row = session.get(BulkRun, run_id)
        assert row is not None
        row.status, row.error = c.RUN_ENQUEUING, None
        session.add(row)
    return _publish(app, engine, run, source, model, options, on_chunk, Ledger(engine, run_id))


def queued(app: Celery) -> int:
    """Messages waiting on the app's requests queue."""
    return RedisProducer(app).depth()


def republish(
    app: Celery, engine: Engine, run_id: str, seqs: list[int], url: str | None = None
) -> int:
    """Publish again the chunks `seqs` of a run (read again from its input); rows sent."""
    _, source, model, options = _recorded(engine, run_id, url)
    wanted, sent = set(seqs), 0
    producer = RedisProducer(app, retry_policy=FAILOVER_RETRY_POLICY)  # rides a failover
    for seq, message in enumerate(numbered_messages(source, model, options, run_id, [])):
        if seq in wanted:
            sent += _send(producer, message.payload, model, options, run_id, seq)
    mark_republished(engine, run_id, sorted(wanted))
    return sent


def _recorded(
    engine: Engine, run_id: str, url: str | None = None
) -> tuple[BulkRun, BulkInput, ModelVersion, BulkOptions]:
    """A run's record, its input (checked to be the same bytes), model and options."""
    with session_scope(engine) as session:
        run = session.get(BulkRun, run_id)
        if run is None:
            raise ValueError(f"no bulk run {run_id!r}; see `scoring status`")
        model = session.scalars(
            select(ModelVersion).where(
                col(ModelVersion.name) == run.model_name,
                col(ModelVersion.version) == run.model_version,
            )
        ).first()
    if run.options is None or run.input_sha256 is None:
        raise ValueError(f"run {run_id} was recorded without its input's identity")
    if model is None:
        raise ValueError(f"run {run_id}: {run.model_name} v{run.model_version} is not registered")
    recorded = dict(run.options)
    where = recorded.pop("input", None) or {"kind": None, "location": run.input}
    if where["kind"] == "sql":
        if not url:
            raise ValueError(f"run {run_id} reads a query: give its database with --from URL")
        source = BulkInput.query(where["location"], url)
    else:
        try:
            source = BulkInput.parse(where["location"])
        except ValueError as exc:
            raise ValueError(f"run {run_id}: its input is gone ({exc})") from None
    if source.identity() != (run.input_bytes, run.input_sha256):
        raise ValueError(
            f"run {run_id}: {source.describe()} changed since the run started (size or "
            "sha256 differ); start a new run"
        )
    return run, source, model, BulkOptions(**recorded)


def _publish(
    app: Celery,
    engine: Engine,
    run: BulkRun,
    source: BulkInput,
    model: ModelVersion,
    options: BulkOptions,
    on_chunk: Callable[[int], None] | None,
    ledger: Ledger | None = None,
) -> BulkRun:
    """Publish every chunk the ledger lacks, recording each after the broker took it."""
    ledger = ledger or Ledger(engine, run.id)
    published = ledger.published()
    producer = RedisProducer(app, retry_policy=FAILOVER_RETRY_POLICY)  # rides a failover
    rejections: list[str] = []
    duplicates: list[str] = []
    enqueued = 0
    shaped = numbered_messages(source, model, options, run.id, rejections, duplicates)
    try:
        for seq, message in enumerate(_read(source, shaped)):
            if seq in published:
                enqueued += message.rows
                continue
            rows = _send(producer, message.payload, model, options, run.id, seq)
            ledger.add(seq, rows, message.first_row, message.last_row)
            enqueued += rows
            if on_chunk:
                on_chunk(enqueued)
    except UnreadableInput as exc:
        chunks, rows = ledger.flush()
        error = redact(_unreadable(run.id, str(exc), chunks, rows, options.id_column))
        _finish_enqueue(engine, run, rejections, c.RUN_FAILED, error, duplicates)
        raise UnreadableInput(error) from exc.__cause__
    except BaseException as exc:
        ledger.flush()
        _finish_enqueue(engine, run, rejections, c.RUN_FAILED, redact(repr(exc)), duplicates)
        raise
    ledger.flush()
    return _finish_enqueue(engine, run, rejections, c.RUN_RUNNING, None, duplicates)


def _read(source: BulkInput, messages: Iterator[Any]) -> Iterator[Any]:
    """The messages, with an error raised while reading the input (not while publishing)
    turned into UnreadableInput: one line naming the input and what is wrong with it."""
    while True:
        try:
            message = next(messages)
        except StopIteration:
            return
        except READ_ERRORS as exc:
            raise UnreadableInput(f"{source.describe()}: {_what(source, exc)}") from exc
        yield message


def _what(source: BulkInput, exc: BaseException) -> str:
    # One line: Arrow's text has newlines, and control bytes from a corrupt file.
    printable = "".join(ch if ch.isprintable() else " " for ch in str(exc))
    detail = " ".join(printable.split()) or type(exc).__name__
    if source.kind == "csv" and detail.startswith(("Empty CSV file", "CSV parse error: Empty")):
        return "empty file (no header row, no rows)"
    if source.kind in ("parquet", "dataset"):
        return f"corrupt or truncated Parquet ({detail})"
    if source.kind == "sql":
        return f"the query failed ({detail})"
    return f"cannot be read as {source.kind.upper()} ({detail})"


def _unreadable(run_id: str, what: str, chunks: int, rows: int, id_column: str | None) -> str:
    """The failed run's error: what is wrong, and what became of the rows read before."""
    if not rows:
        return f"{what}; run {run_id} failed with nothing published"
    again = (
        "the rows scored already count as its duplicates"
        if id_column
        else "its default ids are new, so those rows are scored again"
    )
    return (
        f"{what}; run {run_id} failed after publishing {rows} rows ({chunks} chunks), which "
        "will be scored; --resume cannot fix a corrupt input: repair or re-export it and "
        f"start a new run ({again})"
    )


def _send(
    producer: RedisProducer,
    message: pa.RecordBatch | list[dict[str, Any]],
    model: ModelVersion,
    options: BulkOptions,
    run_id: str,
    seq: int,
) -> int:
    if isinstance(message, pa.RecordBatch):
        return producer.send_chunk(
            message,
            model=model.name,
            model_version=model.version,
            deadline_ms=options.deadline_ms,
            source=c.SOURCE_BULK,
            bulk_run_id=run_id,
            bulk_chunk=seq,
        )
    return producer.send(
        message,
        per_message=max(options.chunk_size, len(message)),
        source=c.SOURCE_BULK,
        bulk_run_id=run_id,
        validate=False,
        bulk_chunk=seq,
    )


def _finish_enqueue(
    engine: Engine,
    run: BulkRun,
    rejections: list[str],
    status: str,
    error: str | None,
    duplicates: Sequence[str] = (),
) -> BulkRun:
    """The run's counts once every chunk went out: enqueued rows are the ledger's; the
    rows read are those plus the rejected ones plus the duplicate ids (so that no
    migration was needed to count them). A run with nothing enqueued is done at once."""
    with session_scope(engine) as session:
        row = session.get(BulkRun, run.id)
        assert row is not None
        row.rejected_rows = len(rejections)
        row.total_rows = row.enqueued_rows + len(rejections) + len(duplicates)
        row.status, row.enqueued_at = status, utcnow()
        if status == c.RUN_RUNNING and row.enqueued_rows == 0:
            row.status, row.finished_at = c.RUN_DONE, row.enqueued_at
        kept = [*rejections, *duplicates][:MAX_REJECTIONS_KEPT]
        row.error = error or ("\n".join(kept) if kept else None)
        session.add(row)
    return row


def progress(engine: Engine, run_id: str) -> tuple[int, int]:
    """(rows with a result, rows expected): duplicates of earlier runs count as done."""
    done, total, _ = _progress(engine, run_id)
    return done, total


def _progress(engine: Engine, run_id: str) -> tuple[int, int, str]:
    """Progress and the run's status, read together (one session per poll)."""
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
        return done, run.enqueued_rows, run.status


def wait(
    engine: Engine,
    run_id: str,
    on_progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.5,
    stall_timeout_s: float | None = None,
    repair: Callable[[list[int]], int] | None = None,
    lease_s: float = 120.0,
    queued: Callable[[], int] = lambda: 0,
) -> bool:
    """Block until every enqueued row has a result; False if progress stalls for
    `stall_timeout_s`.

    With `repair` (see `republish`), a run that has been silent for `lease_s`, whose
    chunks are all out and whose queue is empty (`queued`: a message a dead worker held
    is back on the queue once its lease ends) gets its incomplete chunks published again:
    messages lost outside our control (a Redis restarted without its AOF, a queue purged
    by hand). The lease doubles each time, so a chunk that is slow rather than lost costs
    at most a few extra deliveries, which the upsert turns into nothing; while workers
    are down the queue is not empty, and nothing is published twice."""
    last_done, last_change = -1, time.monotonic()
    repairs = 0
    while True:
        done, total, status = _progress(engine, run_id)
        enqueued = status != c.RUN_ENQUEUING  # the producer is done with the run
        if on_progress:
            on_progress(done, total)
        if done >= total and enqueued:
            return True
        now = time.monotonic()
        if done != last_done:
            last_done, last_change = done, now
        elif stall_timeout_s and now - last_change > stall_timeout_s:
            return False
        elif (
            repair is not None
            and repairs < MAX_REPAIRS
            and now - last_change > lease_s * 2**repairs
            and enqueued
            and queued() == 0
        ):
            missing = incomplete_chunks(engine, run_id)
            if missing:
                log.warning(
                    "run %s: no progress for %.0f s; publishing %d incomplete chunks again: %s",
                    run_id,
                    now - last_change,
                    len(missing),
                    describe_chunks(engine, run_id, missing),
                )
                repair(missing)
            repairs += 1
            last_change = now
        time.sleep(poll_s)
