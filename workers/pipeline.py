"""Score one micro-batch, whatever its source: check, run the model, store results.

The pipeline knows nothing of Kafka or Redis. It turns work items into result rows (ok,
invalid, error, expired) or dead letters (an envelope that cannot be keyed), and writes
the rows with one idempotent upsert per batch.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from schemas.tables import utcnow
from schemas.wire import InputError, ScoreRequest, check_inputs
from scoring import constants as c
from workers import registry
from workers.artifacts import ArtifactError
from workers.runtime import LoadedModel, ModelCache
from workers.sink import ResultSink, SinkUnavailable

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """A request as a source delivered it, before any checking."""

    payload: Any  # a dict, or raw bytes / str from a broker
    source: str
    enqueued_at: datetime | None = None
    bulk_run_id: str | None = None
    token: Any = None  # the source's handle for ack / commit
    outcome: str | None = None  # "stored", "dead" or "retry", set by the pipeline
    reason: str | None = None
    result: dict[str, Any] | None = None  # the result row written for it (sources publish it)


@dataclass
class Scored:
    """A checked request waiting for (or back from) the model."""

    item: WorkItem
    request: ScoreRequest
    inputs: dict[str, Any]
    model: LoadedModel
    outputs: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class PipelineConfig:
    worker: str = "local"
    max_text_chars: int = 10_000
    dead_letter: Callable[[WorkItem], None] = field(default=lambda item: None)


class ScoringPipeline:
    """Check → score → store for one batch at a time; one instance per worker process."""

    def __init__(
        self, engine: Engine, sink: ResultSink, models: ModelCache, config: PipelineConfig
    ) -> None:
        self.engine = engine
        self.sink = sink
        self.models = models
        self.config = config
        self._records: dict[tuple[str, int], Any] = {}

    def process(self, items: list[WorkItem]) -> None:
        """Score `items` and store their results; sets each item's outcome.

        Raises SinkUnavailable (nothing stored) when the database stays down; the
        caller then leaves the batch unacknowledged for redelivery.
        """
        started = utcnow()
        active = _ActiveVersions(self.engine)
        rows: list[dict[str, Any]] = []
        ready: list[Scored] = []
        for item in items:
            scored = self._check(item, active, started, rows)
            if scored is not None:
                ready.append(scored)
        metrics = self._run_models(ready, rows)
        self.sink.write(rows, metrics)
        for item in items:
            if item.outcome is None:
                item.outcome = "stored"

    # -- checking ---------------------------------------------------------------------

    def _check(
        self,
        item: WorkItem,
        active: _ActiveVersions,
        now: datetime,
        rows: list[dict[str, Any]],
    ) -> Scored | None:
        try:
            request = _parse(item.payload)
            model = self._model_for(request, active)
        except (ValueError, ValidationError, registry.RegistryError, ArtifactError) as exc:
            self._dead(item, _short(exc))
            return None
        if _expired(request, item.enqueued_at, now):
            rows.append(
                self._row(
                    item,
                    request,
                    model,
                    c.STATUS_EXPIRED,
                    error=f"deadline of {request.deadline_ms} ms passed",
                )
            )
            return None
        try:
            inputs = check_inputs(request.inputs, model.input_schema, self.config.max_text_chars)
        except InputError as exc:
            rows.append(self._row(item, request, model, c.STATUS_INVALID, error=str(exc)))
            return None
        return Scored(item, request, inputs, model)

    def _model_for(self, request: ScoreRequest, active: _ActiveVersions) -> LoadedModel:
        version = request.model_version or active.get(request.model)
        if version is None:
            raise registry.RegistryError(f"model {request.model!r} has no active version")
        key = (request.model, version)
        if key not in self._records:
            with _database_needed():
                self._records[key] = registry.get_version(self.engine, request.model, version)
        return self.models.get(self._records[key])

    def _dead(self, item: WorkItem, reason: str) -> None:
        item.outcome, item.reason = "dead", reason
        self.config.dead_letter(item)

    # -- scoring ----------------------------------------------------------------------

    def _run_models(self, ready: list[Scored], rows: list[dict[str, Any]]) -> list[dict]:
        groups: dict[tuple[str, int], list[Scored]] = defaultdict(list)
        for scored in ready:
            groups[(scored.model.name, scored.model.version)].append(scored)
        metrics = []
        for group in groups.values():
            model = group[0].model
            for start in range(0, len(group), model.max_batch_size):
                chunk = group[start : start + model.max_batch_size]
                metrics.append(self._run_chunk(model, chunk, rows))
        return metrics

    def _run_chunk(
        self, model: LoadedModel, chunk: list[Scored], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        batch_id = uuid.uuid4().hex[:16]
        began = utcnow()
        t0 = time.perf_counter()
        _predict_isolating_failures(model, chunk)
        inference_ms = (time.perf_counter() - t0) * 1000
        waits = [_ms_between(s.item.enqueued_at, began) for s in chunk]
        for scored in chunk:
            status = c.STATUS_OK if scored.error is None else c.STATUS_ERROR
            rows.append(
                self._row(
                    scored.item,
                    scored.request,
                    model,
                    status,
                    outputs=scored.outputs,
                    error=scored.error,
                    batch_id=batch_id,
                    began=began,
                    inference_ms=inference_ms,
                )
            )
        known = [w for w in waits if w is not None]
        return {
            "batch_id": batch_id,
            "worker": self.config.worker,
            "device": model.device,
            "model_name": model.name,
            "model_version": model.version,
            "backend": model.backend,
            "source_mix": dict(Counter(s.item.source for s in chunk)),
            "batch_size": len(chunk),
            "queue_wait_ms": sum(known) / len(known) if known else 0.0,
            "inference_ms": inference_ms,
            "rows_per_s": len(chunk) / max(inference_ms / 1000, 1e-9),
            "created_at": utcnow(),
        }

    def _row(
        self,
        item: WorkItem,
        request: ScoreRequest,
        model: LoadedModel,
        status: str,
        *,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        batch_id: str | None = None,
        began: datetime | None = None,
        inference_ms: float | None = None,
    ) -> dict[str, Any]:
        item.result = {
            "request_id": request.request_id,
            "model_name": model.name,
            "model_version": model.version,
            "artifact_sha256": model.sha256,
            "outputs": outputs,
            "status": status,
            "error": error,
            "source": item.source,
            "bulk_run_id": item.bulk_run_id,
            "metadata": request.metadata or None,
            "enqueued_at": item.enqueued_at,
            "scored_at": utcnow(),
            "queue_ms": _ms_between(item.enqueued_at, began) if began else None,
            "inference_ms": inference_ms,
            "batch_id": batch_id,
            "backend": model.backend,
            "device": model.device,
            "worker": self.config.worker,
        }
        return item.result


class _ActiveVersions:
    """The active version of each model, read at most once per batch and only if a request
    in it names no version (bulk runs pin theirs): promote/rollback apply from the next batch.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._versions: dict[str, int] | None = None

    def get(self, name: str) -> int | None:
        if self._versions is None:
            with _database_needed():
                self._versions = registry.active_versions(self.engine)
        return self._versions.get(name)


@contextmanager
def _database_needed() -> Iterator[None]:
    """A registry read that hits a database outage fails the batch like the sink does
    (nothing stored, redelivered later), not as an unexpected error."""
    try:
        yield
    except OperationalError as exc:
        raise SinkUnavailable(f"database unavailable: {exc.orig!r}") from exc


def _predict_isolating_failures(model: LoadedModel, chunk: list[Scored]) -> None:
    """Run the chunk; if the model raises, split it in halves to find the bad request(s)."""
    try:
        outputs = model.predict([s.inputs for s in chunk])
    except Exception as exc:  # noqa: BLE001 - a model may raise anything; we record it
        if len(chunk) == 1:
            chunk[0].error = f"model failed: {_short(exc)}"
            return
        middle = len(chunk) // 2
        _predict_isolating_failures(model, chunk[:middle])
        _predict_isolating_failures(model, chunk[middle:])
        return
    for scored, out in zip(chunk, outputs, strict=True):
        scored.outputs = out


def _parse(payload: Any) -> ScoreRequest:
    if isinstance(payload, bytes | bytearray):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc}") from exc
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return ScoreRequest.model_validate(payload)


def _expired(request: ScoreRequest, enqueued_at: datetime | None, now: datetime) -> bool:
    if request.deadline_ms is None or enqueued_at is None:
        return False
    return (now - enqueued_at).total_seconds() * 1000 > request.deadline_ms


def _ms_between(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else (end - start).total_seconds() * 1000


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )[:1000]
    return str(exc)[:1000]


def from_epoch(ts: float | None) -> datetime | None:
    """An enqueue timestamp carried on the wire as epoch seconds."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
