"""One repetition of each e2e arm. Every arm counts rows in and results out, on its own
clock, and stops at its row budget or its time budget, whichever comes first."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection
from sqlalchemy import Engine, text
from sqlmodel import Session

from bench.e2e_stack import count_rows, wait_until
from producers import bulk as bulk_jobs
from producers.redis_producer import RedisProducer
from schemas import names as c
from schemas.tables import ModelVersion, ScoreResult, utcnow
from workers.core.sink import ResultSink
from workers.runtime.loaded import LoadedModel


@dataclass(frozen=True)
class Budget:
    """Stop an arm at `rows` rows or `seconds` seconds; give up after `stall_s` idle."""

    rows: int
    seconds: float
    stall_s: float = 60.0


@dataclass
class Rep:
    """One repetition: rows that went in, results that came out, wall seconds."""

    rows_in: int
    rows_out: int
    seconds: float
    by_worker: dict[str, int] | None = None  # results per worker process, queue arms

    @property
    def lost(self) -> int:
        return self.rows_in - self.rows_out

    @property
    def rows_per_s(self) -> float:
        return self.rows_out / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return {
            **fields,
            "seconds": round(self.seconds, 3),
            "lost": self.lost,
            "rows_per_s": round(self.rows_per_s, 1),
        }


def inprocess(model: LoadedModel, inputs: list[dict[str, Any]], budget: Budget) -> Rep:
    """Arm 1: the runtime alone, micro-batches of the version's max batch size."""
    size = model.max_batch_size
    model.predict(inputs[:size])  # warm
    done, t0 = 0, time.perf_counter()
    while done < budget.rows and time.perf_counter() - t0 < budget.seconds:
        start = done % len(inputs)
        chunk = inputs[start : start + min(size, budget.rows - done)]
        done += len(model.predict(chunk))
    return Rep(done, done, time.perf_counter() - t0)


def bulk(
    app: Celery, engine: Engine, data: Path, record: ModelVersion, chunk: int, stall_s: float
) -> Rep:
    """Arms 2 and 5: what `scoring bulk FILE --wait` does, timed from the first row read to
    the last result stored. Lost rows are read back from the database, not assumed."""
    t0 = time.monotonic()
    run = bulk_jobs.enqueue_file(app, engine, data, record, bulk_jobs.BulkOptions(chunk_size=chunk))
    where = f"WHERE bulk_run_id = '{run.id}'"
    done, t_done = wait_until(lambda: count_rows(engine, where), run.enqueued_rows, stall_s)
    return Rep(run.enqueued_rows + run.rejected_rows, done, t_done - t0, by_worker(engine, where))


def by_worker(engine: Engine, where: str = "") -> dict[str, int]:
    """How the results were shared out: adding a worker only helps if it gets work."""
    query = f"SELECT worker, count(*) FROM score_results {where} GROUP BY worker ORDER BY 1"  # nosec B608
    with engine.connect() as conn:
        return {str(w): int(n) for w, n in conn.execute(text(query))}


def paced(
    send: Callable[[list[dict[str, Any]]], Any],
    requests: list[dict[str, Any]],
    count: Callable[[], int],
    budget: Budget,
    window: int,
    step: int = 50,
) -> Rep:
    """Publish `step` requests at a time, keeping at most `window` ahead of the results:
    the consumers never starve, and a slow arm drains in seconds once time is up."""
    sent, done, t0 = 0, 0, time.monotonic()
    limit = min(budget.rows, len(requests))
    while sent < limit and time.monotonic() - t0 < budget.seconds:
        if sent - done >= window:
            done = count()
            if sent - done >= window:
                time.sleep(0.01)
                continue
        batch = requests[sent : min(sent + step, limit)]
        send(batch)
        sent += len(batch)
    done, t_done = wait_until(count, sent, budget.stall_s)
    return Rep(sent, done, t_done - t0)


def per_request_sender(app: Celery) -> Callable[[list[dict[str, Any]]], Any]:
    """Arm 4: the product's producer with one request per task message."""
    producer = RedisProducer(app)
    return lambda batch: producer.send(batch, per_message=1)


def naive_sender(app: Celery, task: str) -> Callable[[list[dict[str, Any]]], Any]:
    """Arm 3: `task.delay(row)` for every row, as a first version does."""

    def send(batch: list[dict[str, Any]]) -> None:
        for request in batch:
            app.send_task(task, args=[request])

    return send


def result_rows(n: int, prefix: str, record: ModelVersion) -> list[dict[str, Any]]:
    """Result rows shaped as the pipeline writes them (lineage, JSON outputs, metadata)."""
    now = utcnow()
    return [
        {
            "request_id": f"{prefix}-{i}",
            "model_name": record.name,
            "model_version": record.version,
            "artifact_sha256": record.artifact_sha256,
            "outputs": {"label": "benign", "score": 0.981234},
            "status": c.STATUS_OK,
            "error": None,
            "source": c.SOURCE_BULK,
            "bulk_run_id": f"{prefix}-run",
            "metadata": {"label": "benign"},
            "enqueued_at": now,
            "scored_at": now,
            "queue_ms": 12.5,
            "inference_ms": 3.25,
            "batch_id": f"{prefix}-{i // 256}",
            "backend": record.backend,
            "device": "cpu",
            "worker": "bench",
        }
        for i in range(n)
    ]


def _metric(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    return {
        "batch_id": first["batch_id"],
        "worker": "bench",
        "device": "cpu",
        "model_name": first["model_name"],
        "model_version": first["model_version"],
        "backend": first["backend"],
        "source_mix": {c.SOURCE_BULK: len(rows)},
        "batch_size": len(rows),
        "queue_wait_ms": 12.5,
        "inference_ms": 3.25,
        "rows_per_s": 1000.0,
        "created_at": utcnow(),
    }


def sink(engine: Engine, rows: list[dict[str, Any]], budget: Budget, batch: int = 256) -> Rep:
    """The product's batch upsert alone: one transaction per `batch` rows plus its metric."""
    result_sink = ResultSink(engine)
    sent, t0 = 0, time.perf_counter()
    while sent < min(budget.rows, len(rows)) and time.perf_counter() - t0 < budget.seconds:
        chunk = rows[sent : sent + batch]
        result_sink.write(chunk, [_metric(chunk)])
        sent += len(chunk)
    seconds = time.perf_counter() - t0
    return Rep(sent, count_rows(engine), seconds)


def orm_per_row(engine: Engine, rows: list[dict[str, Any]], budget: Budget) -> Rep:
    """The baseline: one ORM insert and one commit per row."""
    sent, t0 = 0, time.perf_counter()
    with Session(engine) as session:
        while sent < min(budget.rows, len(rows)) and time.perf_counter() - t0 < budget.seconds:
            row = dict(rows[sent])
            session.add(ScoreResult(meta=row.pop("metadata"), **row))
            session.commit()
            sent += 1
    seconds = time.perf_counter() - t0
    return Rep(sent, count_rows(engine), seconds)


def enqueue(app: Celery, requests: list[dict[str, Any]], budget: Budget, per_message: int) -> Rep:
    """Requests per second one process publishes with RedisProducer.send (validating)."""
    producer = RedisProducer(app)
    limit = min(budget.rows, len(requests))
    warm = producer.send(requests[:per_message], per_message=per_message)  # connects
    sent, t0 = warm, time.perf_counter()
    while sent < limit and time.perf_counter() - t0 < budget.seconds:
        sent += producer.send(requests[sent : sent + 10 * per_message], per_message=per_message)
    seconds = time.perf_counter() - t0
    out = drain_requests(app.conf.broker_url, app.conf.task_default_queue)
    return Rep(sent - warm, out - warm, seconds)


def drain_requests(broker_url: str, queue: str) -> int:
    """Take every task message off `queue`, acknowledged, and count the requests they carry.

    Acknowledged: our transport's fetch records each message it hands out as unacked, and
    one left there comes back on the queue once its lease ends (counted again by the next
    repetition: 100,000 more requests out than in, per repetition, before this)."""
    total = 0
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        while True:
            message = channel.basic_get(queue)
            if message is None:
                return total
            args, _, _ = json.loads(message.body)
            total += len(args[0])
            message.ack()
