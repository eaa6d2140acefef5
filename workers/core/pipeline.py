"""Score one micro-batch, whatever its source: check, run the model, store results.

The pipeline knows nothing of Kafka or Redis. It turns work items into result rows (ok,
invalid, error, expired) or dead letters (an envelope that cannot be keyed), and writes
the rows with one idempotent upsert per batch. An item is one request, or a bulk chunk of
many (workers/chunks.py), checked and scored column-wise.
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
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from schemas import names as c
from schemas.tables import utcnow
from schemas.wire import (
    DEFAULT_MAX_METADATA_BYTES,
    InputError,
    ScoreRequest,
    check_inputs,
    expired,
    parse_payload,
)
from workers.core.chunks import CheckedChunk, RowChunk, check_chunk
from workers.core.model_calls import score_columns, score_rows, short_error
from workers.core.oom import BatchLimits, Fit
from workers.core.result_rows import chunk_rows, metric_row, ms_between, request_row
from workers.core.sink import ResultSink, SinkUnavailable
from workers.core.switch import Switch, VersionWatcher
from workers.hooks import BatchReport
from workers.hooks.drift import call_summary
from workers.runtime import registry
from workers.runtime.artifacts import ArtifactError
from workers.runtime.loaded import LoadedModel, ModelCache
from workers.sources.base import Outcome, WorkItem

log = logging.getLogger(__name__)


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
class ChunkWork:
    """A bulk chunk whose valid rows wait for the model."""

    item: WorkItem
    checked: CheckedChunk
    model: LoadedModel


@dataclass
class PipelineConfig:
    worker: str = "local"
    max_text_chars: int = 10_000
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    retain_inputs: bool = False  # raw inputs in score_results.inputs (else only their sha256)
    max_request_bytes: int = 1024 * 1024  # a request as bytes (Kafka) larger: a dead letter
    dead_letter: Callable[[WorkItem], None] = field(default=lambda item: None)


class ScoringPipeline:
    """Check → score → store for one batch at a time; one instance per worker process."""

    def __init__(
        self,
        engine: Engine,
        sink: ResultSink,
        models: ModelCache,
        config: PipelineConfig,
        versions: VersionWatcher | None = None,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        self.engine = engine
        self.sink = sink
        self.models = models
        self.config = config
        # With a watcher, requests naming no version get the version it serves (switched
        # between batches once warm); without one, the registry's, read once per batch.
        self.versions = versions
        # Versions whose calls ran out of memory are cut smaller from then on (oom.py).
        self.batch_limits = batch_limits if batch_limits is not None else BatchLimits()
        self._records: dict[tuple[str, int], Any] = {}
        self._last_call: dict[str, str] = {}  # model name -> batch_id of its last call
        self._cutting: dict[str, Switch] = {}  # switches taken, first call not seen yet
        # What the batch in hand (or the last one) became, filled as it goes: the hooks
        # read it, also when the batch raised.
        self.report = BatchReport()

    def process(self, items: list[WorkItem]) -> BatchReport:
        """Score `items` and store their results; sets each item's outcome, and fills
        `self.report` (for the hooks) as it goes.

        Raises SinkUnavailable (nothing stored) when the database stays down; the
        caller then leaves the batch unacknowledged for redelivery.
        """
        self.report = report = BatchReport()
        started = utcnow()
        active = _ActiveVersions(self.engine, self._begin_versions())
        rows: list[dict[str, Any]] = []
        ready: list[Scored] = []
        chunks: list[ChunkWork] = []
        for item in items:
            if isinstance(item.payload, RowChunk):
                work = self._check_chunk(item, active, started, rows, ready)
                if work is not None:
                    chunks.append(work)
                continue
            scored = self._check(item, active, started, rows)
            if scored is not None:
                ready.append(scored)
        metrics = self._run_models(ready, rows)
        for work in chunks:
            metrics += self._run_chunk_columns(work, rows)
        report.rows, report.calls = rows, metrics
        report.batch_limits = self.batch_limits.lowered()
        self._note_calls(metrics)
        self.sink.write(rows, metrics)
        report.stored = True
        for item in items:
            if item.outcome is None:
                item.outcome = Outcome.STORED
        return report

    # -- checking ---------------------------------------------------------------------

    def _check(
        self,
        item: WorkItem,
        active: _ActiveVersions,
        now: datetime,
        rows: list[dict[str, Any]],
    ) -> Scored | None:
        try:
            request = parse_payload(
                item.payload, self.config.max_metadata_bytes, self.config.max_request_bytes
            )
            model = self._model_named(request.model, request.model_version, active)
        except (ValueError, ValidationError, registry.RegistryError, ArtifactError) as exc:
            self._dead(item, short_error(exc))
            return None
        if expired(request.deadline_ms, item.enqueued_at, now):
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

    def _model_named(self, name: str, version: int | None, active: _ActiveVersions) -> LoadedModel:
        named = version is not None
        version = version or active.get(name)
        if version is None:
            raise registry.RegistryError(f"model {name!r} has no active version")
        key = (name, version)
        if key not in self._records:
            with _database_needed():
                self._records[key] = registry.get_version(self.engine, name, version)
        return self.models.get(self._records[key], named=named)

    # -- versions: the watcher's switches, the versions' batching limits ----------------

    def _begin_versions(self) -> dict[str, int] | None:
        """The versions this batch serves (None: read the registry), taking any switch the
        watcher has warmed up; a switch is logged once its first model call is known."""
        if self.versions is None:
            return None
        serving, taken = self.versions.begin_batch()
        for switch in taken:
            switch.last_batch_before = self._last_call.get(switch.name)
            self._cutting[switch.name] = switch
        return serving

    def _note_calls(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            name, version = call["model_name"], call["model_version"]
            switch = self._cutting.get(name)
            if switch is not None and version == switch.new:
                switch.first_batch_after = call["batch_id"]
                del self._cutting[name]
                log.info(
                    "cut over %s v%d -> v%d: last v%d batch %s, first v%d batch %s "
                    "(v%d warmed up in %.2f s off the scorer thread)",
                    name,
                    switch.old,
                    switch.new,
                    switch.old,
                    switch.last_batch_before,
                    switch.new,
                    switch.first_batch_after,
                    switch.new,
                    switch.warm_s,
                )
            self._last_call[name] = call["batch_id"]

    def limits_of(
        self, item: WorkItem, max_size: int, max_wait_s: float
    ) -> tuple[int, float] | None:
        """The (max_batch_size, max_wait_s) of the version `item` will be scored by, when
        that version is loaded and at least one of its limits is tighter than the given
        (the process's) ones; None otherwise, or when the payload does not say cheaply.
        A version's max_batch_size counts as lowered once its calls ran out of memory."""
        lowered = self.batch_limits.lowered()
        tighter = {
            key: (min(size, lowered.get(key, size)), wait_ms / 1000)
            for key, (size, wait_ms) in self.models.limits.items()
            if min(size, lowered.get(key, size)) < max_size or wait_ms / 1000 < max_wait_s
        }
        if not tighter:
            return None
        name, version = _model_of(item.payload)
        if name is None:
            return None
        if version is None:
            version = self.versions.serving(name) if self.versions is not None else None
        return tighter.get((name, version)) if version is not None else None

    def _check_chunk(
        self,
        item: WorkItem,
        active: _ActiveVersions,
        now: datetime,
        rows: list[dict[str, Any]],
        ready: list[Scored],
    ) -> ChunkWork | None:
        """Check a bulk chunk column-wise; a chunk that does not fit its model's schema (or
        names no usable model) is checked as the request dicts it holds, one by one."""
        chunk: RowChunk = item.payload
        if chunk.rows is None:
            self._dead(item, chunk.error or "unreadable chunk")
            return None
        try:
            model = self._model_named(chunk.model, chunk.model_version, active)
            checked = check_chunk(
                chunk.rows,
                model.input_schema,
                self.config.max_text_chars,
                self.config.max_metadata_bytes,
            )
        except (ValueError, registry.RegistryError, ArtifactError):
            checked = None
        if checked is None:
            for payload in chunk.requests():
                part = WorkItem(
                    payload,
                    item.source,
                    item.enqueued_at,
                    item.bulk_run_id,
                    bulk_chunk=item.bulk_chunk,
                )
                scored = self._check(part, active, now, rows)
                if scored is not None:
                    ready.append(scored)
            return None
        if expired(chunk.deadline_ms, item.enqueued_at, now):
            error = f"deadline of {chunk.deadline_ms} ms passed"
            every = range(len(checked.ids))
            rows += self._chunk_rows(item, checked, model, every, c.STATUS_EXPIRED, error=error)
            return None
        for index, reason in checked.invalid.items():
            rows += self._chunk_rows(item, checked, model, [index], c.STATUS_INVALID, error=reason)
        return ChunkWork(item, checked, model)

    def _dead(self, item: WorkItem, reason: str) -> None:
        item.outcome, item.reason = Outcome.DEAD, reason
        self.report.dead.append(item)
        self.config.dead_letter(item)

    # -- scoring ----------------------------------------------------------------------

    def _run_models(self, ready: list[Scored], rows: list[dict[str, Any]]) -> list[dict]:
        groups: dict[tuple[str, int], list[Scored]] = defaultdict(list)
        for scored in ready:
            groups[(scored.model.name, scored.model.version)].append(scored)
        metrics = []
        for group in groups.values():
            model, start = group[0].model, 0
            while start < len(group):  # the limit is read again: a call may have lowered it
                chunk = group[start : start + self.batch_limits.limit(model)]
                start += len(chunk)
                metrics.append(self._run_chunk(model, chunk, rows))
        return metrics

    def _run_chunk_columns(self, work: ChunkWork, rows: list[dict[str, Any]]) -> list[dict]:
        """Score a chunk's valid rows by column, `max_batch_size` (or the version's lowered
        limit) at a time; if the model raises, score that slice row by row to find the
        request(s) that fail it; if it runs out of memory, split the slice and retry."""
        model, checked, metrics = work.model, work.checked, []
        start = 0
        while start < len(checked.valid):
            stop = min(len(checked.valid), start + self.batch_limits.limit(model))
            columns = {k: v[start:stop] for k, v in checked.columns.items()}
            batch_id, began, t0 = uuid.uuid4().hex[:16], utcnow(), time.perf_counter()
            with self.batch_limits.search(model) as fit:
                scored = score_columns(model, columns, stop - start, fit)
            inference_ms = (time.perf_counter() - t0) * 1000
            indices = checked.valid[start:stop].tolist()
            rows += self._chunk_rows(
                work.item,
                checked,
                model,
                indices,
                c.STATUS_OK,
                scored=scored,
                batch_id=batch_id,
                began=began,
                inference_ms=inference_ms,
            )
            wait = ms_between(work.item.enqueued_at, began)
            metrics.append(
                metric_row(
                    model,
                    self.config.worker,
                    batch_id,
                    {work.item.source: stop - start},
                    [wait] * (stop - start) if wait is not None else [],
                    inference_ms,
                    call_summary(model.reference, columns, None, [out for out, _ in scored]),
                )
            )
            start = stop
        return metrics

    def _run_chunk(
        self, model: LoadedModel, chunk: list[Scored], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        batch_id = uuid.uuid4().hex[:16]
        began = utcnow()
        t0 = time.perf_counter()
        with self.batch_limits.search(model) as fit:
            _predict_isolating_failures(model, chunk, fit)
        inference_ms = (time.perf_counter() - t0) * 1000
        waits = [ms_between(s.item.enqueued_at, began) for s in chunk]
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
        mix = dict(Counter(s.item.source for s in chunk))
        summary = call_summary(
            model.reference, None, [s.inputs for s in chunk], [s.outputs for s in chunk]
        )
        return metric_row(model, self.config.worker, batch_id, mix, waits, inference_ms, summary)

    def _row(
        self, item: WorkItem, request: ScoreRequest, model: LoadedModel, status: str, **fields: Any
    ) -> dict[str, Any]:
        """The result row of a single request; sources that publish results read item.result."""
        config = self.config
        item.result = request_row(
            item, request, model, status, config.worker, config.retain_inputs, **fields
        )
        return item.result

    def _chunk_rows(
        self,
        item: WorkItem,
        checked: CheckedChunk,
        model: LoadedModel,
        indices: Any,
        status: str,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        config = self.config
        return chunk_rows(
            item, checked, model, indices, status, config.worker, config.retain_inputs, **fields
        )


class _ActiveVersions:
    """The active version of each model, read at most once per batch and only if a request
    in it names no version (bulk runs pin theirs): promote/rollback apply from the next batch.
    """

    def __init__(self, engine: Engine, serving: dict[str, int] | None = None) -> None:
        self.engine = engine
        self.serving = serving or {}  # the watcher's, where it has one; else the registry
        self._versions: dict[str, int] | None = None

    def get(self, name: str) -> int | None:
        if name in self.serving:
            return self.serving[name]
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


def _predict_isolating_failures(model: LoadedModel, chunk: list[Scored], fit: Fit) -> None:
    for scored, (outputs, error) in zip(
        chunk, score_rows(model, [s.inputs for s in chunk], fit), strict=True
    ):
        scored.outputs, scored.error = outputs, error


def _model_of(payload: Any) -> tuple[str | None, int | None]:
    """The model name and version a payload names, without checking it (None: unknown)."""
    if isinstance(payload, RowChunk):
        return payload.model, payload.model_version
    if isinstance(payload, bytes | bytearray | str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None, None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
        return None, None
    version = payload.get("model_version")
    return payload["model"], version if isinstance(version, int) else None
