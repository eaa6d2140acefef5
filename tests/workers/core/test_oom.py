"""A model call that runs out of memory is split and retried, never turned into errors, and
its version is batched smaller from then on (workers/core/oom.py)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest
import torch
from sqlmodel import select

from schemas.chunks import REQUEST_ID_COLUMN, encode_chunk
from schemas.db import session_scope
from schemas.tables import BatchMetric, ScoreResult, utcnow
from tests.helpers import demo_requests
from workers.core import oom
from workers.core.chunks import RowChunk
from workers.core.oom import ALONE, BatchLimits, Fit, below, call_rows, is_out_of_memory
from workers.hooks import BatchReport
from workers.hooks.metrics import WorkerMetrics
from workers.runtime.backends import buckets
from workers.runtime.loaded import LoadedModel
from workers.runtime.models.demo.build import sample_rows
from workers.sources.base import Outcome, WorkItem

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"
CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes"


class OutOfMemoryAbove:
    """Wraps a model's runner: a call of more than `k` rows runs out of memory (as
    `error(message)`); records the rows of every call the runner sees."""

    def __init__(
        self,
        runner: Any,
        k: int,
        error: Callable[[str], Exception] = torch.OutOfMemoryError,
        message: str = CUDA_OOM,
    ) -> None:
        self.runner, self.k, self.error, self.message = runner, k, error, message
        self.calls: list[int] = []
        self.failed: list[int] = []

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        rows = tensors[0].shape[0]
        self.calls.append(rows)
        if rows > self.k:
            self.failed.append(rows)
            raise self.error(self.message)
        return self.runner(*tensors)

    def after_first_failure(self) -> list[int]:
        return self.calls[self.calls.index(self.failed[0]) + 1 :] if self.failed else []


def loaded(
    pipeline: Any, record: Any, k: int, **options: Any
) -> tuple[LoadedModel, OutOfMemoryAbove]:
    """The version as the pipeline scores it (loaded, warmed up), its runner wrapped."""
    model = pipeline.models.get(record)
    wrapper = OutOfMemoryAbove(model.runner, k, **options)
    model.runner = wrapper
    return model, wrapper


def items(payloads: list[dict[str, Any]]) -> list[WorkItem]:
    return [WorkItem(payload=p, source="redis", enqueued_at=utcnow()) for p in payloads]


def chunk_item(n: int, prefix: str = "c", seed: int = 3) -> WorkItem:
    """A bulk chunk of `n` demo rows (the column path), ids `prefix-0`…"""
    names, rows, _ = sample_rows(n, seed)
    arrays = [pa.array([f"{prefix}-{i}" for i in range(n)])]
    arrays += [pa.array(rows[:, j].astype(float)) for j in range(len(names))]
    batch = pa.RecordBatch.from_arrays(arrays, names=[REQUEST_ID_COLUMN, *names])
    payload = RowChunk(encode_chunk(batch), "demo", 1, None, rows=batch)
    return WorkItem(payload, "bulk", utcnow(), "run1", size=n)


def stored(engine: Any) -> list[ScoreResult]:
    with session_scope(engine) as session:
        return list(session.exec(select(ScoreResult)).all())


def call_sizes(engine: Any) -> list[int]:
    with session_scope(engine) as session:
        return sorted(m.batch_size for m in session.exec(select(BatchMetric)).all())


def lowerings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "batch limit" in r.getMessage()]


def expected_labels(model: LoadedModel, wrapper: OutOfMemoryAbove, payloads: list) -> list[str]:
    """What the model says of each request scored in one call, without the wrapper."""
    runner, model.runner = model.runner, wrapper.runner
    try:
        return [o["label"] for o in model.predict([p["inputs"] for p in payloads])]
    finally:
        model.runner = runner


@pytest.mark.parametrize(
    ("error", "message"),
    [(torch.OutOfMemoryError, CUDA_OOM), (RuntimeError, CPU_OOM), (MemoryError, "")],
    ids=["torch-oom", "cpu-allocator", "memory-error"],
)
def test_requests_of_a_call_that_runs_out_of_memory_are_all_scored(
    demo_pipeline: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    error: Callable[[str], Exception],
    message: str,
) -> None:
    engine, pipeline, dead, record = demo_pipeline
    model, wrapper = loaded(pipeline, record, k=128, error=error, message=message)
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    payloads = demo_requests(300)
    batch = items(payloads)
    caplog.set_level(logging.WARNING, "workers.core.oom")

    report = pipeline.process(batch)

    rows = stored(engine)
    assert len(rows) == 300 and len(report.rows) == 300 and not dead
    assert Counter(r["request_id"] for r in report.rows).most_common(1)[0][1] == 1
    assert {r.status for r in rows} == {"ok"} and {i.outcome for i in batch} == {Outcome.STORED}
    by_id = {r.request_id: (r.outputs or {})["label"] for r in rows}
    assert [by_id[p["request_id"]] for p in payloads] == expected_labels(model, wrapper, payloads)
    # 256 ran out; its halves fitted; the 44 left are cut at the new limit
    assert wrapper.calls == [256, 128, 128, 44]
    assert all(n <= 128 for n in wrapper.after_first_failure())
    assert emptied  # the CUDA cache was emptied before the retry
    assert pipeline.batch_limits.limit(model) == 128
    assert report.batch_limits == {("demo", 1): 128}
    assert lowerings(caplog) == [
        "out of memory: demo v1 batch limit 256 -> 128 rows until restart "
        "(a call of 256 rows ran out; backend eager)"
    ]
    # one batch_metrics row per logical call, the split one counted whole
    assert call_sizes(engine) == [44, 256]

    # the next batch is cut at 128 from the start: no call runs out, no new warning
    wrapper.calls.clear()
    caplog.clear()
    pipeline.process(items(demo_requests(300, prefix="next", seed=1)))
    assert wrapper.calls == [128, 128, 44] and not lowerings(caplog)
    assert len(stored(engine)) == 600 and {r.status for r in stored(engine)} == {"ok"}


def test_a_bulk_chunk_that_runs_out_of_memory_is_split_by_column(
    demo_pipeline: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, pipeline, dead, record = demo_pipeline
    model, wrapper = loaded(pipeline, record, k=128)
    by_row: list[int] = []
    real = LoadedModel.predict

    def predict(self: LoadedModel, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_row.append(len(inputs))
        return real(self, inputs)

    monkeypatch.setattr(LoadedModel, "predict", predict)
    caplog.set_level(logging.WARNING, "workers.core.oom")
    item = chunk_item(600)

    report = pipeline.process([item])

    rows = stored(engine)
    assert item.outcome is Outcome.STORED and not dead
    assert len(rows) == 600 and len(report.rows) == 600
    assert {r.request_id for r in rows} == {f"c-{i}" for i in range(600)}
    assert {r.status for r in rows} == {"ok"}
    assert not by_row  # split and retried by column, never as request dicts
    assert wrapper.calls == [256, 128, 128, 128, 128, 88]
    assert all(n <= 128 for n in wrapper.after_first_failure())
    assert len(lowerings(caplog)) == 1 and pipeline.batch_limits.limit(model) == 128
    assert call_sizes(engine) == [88, 128, 128, 256]

    wrapper.calls.clear()
    pipeline.process([chunk_item(300, prefix="d")])
    assert wrapper.calls == [128, 128, 44] and len(lowerings(caplog)) == 1
    assert len(stored(engine)) == 900 and {r.status for r in stored(engine)} == {"ok"}


def test_the_limit_is_the_largest_call_that_fitted_and_is_lowered_once(
    demo_pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine, pipeline, _, record = demo_pipeline
    model, wrapper = loaded(pipeline, record, k=100)
    caplog.set_level(logging.WARNING, "workers.core.oom")
    pipeline.process(items(demo_requests(256)) + [chunk_item(256)])
    # rows: 256 ran out, then each 128 half, whose 64s fitted; the chunk is cut at 64 at once
    assert wrapper.calls[:7] == [256, 128, 64, 64, 128, 64, 64]
    assert wrapper.calls[7:] == [64] * 4
    assert lowerings(caplog) == [
        "out of memory: demo v1 batch limit 256 -> 64 rows until restart "
        "(a call of 128 rows ran out; backend eager)"
    ]
    assert len(stored(engine)) == 512 and {r.status for r in stored(engine)} == {"ok"}


def test_the_batcher_cuts_a_lowered_version_at_its_new_limit(demo_pipeline: Any) -> None:
    _, pipeline, _, record = demo_pipeline
    model, _ = loaded(pipeline, record, k=128)
    request = WorkItem(demo_requests(1)[0], "redis")
    pinned = WorkItem(b'{"model": "demo", "model_version": 1}', "kafka")
    chunk = chunk_item(4)
    assert pipeline.limits_of(chunk, 256, 0.01) is None  # v1's own limits are the process's
    pipeline.process(items(demo_requests(256)))
    assert pipeline.batch_limits.limit(model) == 128
    # a pinned version (chunks, requests naming it) is batched by its lowered size
    assert pipeline.limits_of(chunk, 256, 0.01) == (128, 0.01)
    assert pipeline.limits_of(pinned, 256, 0.01) == (128, 0.01)
    assert pipeline.limits_of(pinned, 64, 0.01) is None  # the process's own are tighter
    # without a version watcher the batcher cannot tell what an unpinned request gets;
    # the pipeline still cuts its calls at the lowered size
    assert pipeline.limits_of(request, 256, 0.05) is None


def test_a_model_that_runs_out_of_memory_on_one_row_gives_error_rows(demo_pipeline: Any) -> None:
    engine, pipeline, dead, record = demo_pipeline
    model, wrapper = loaded(pipeline, record, k=0)
    batch = items(demo_requests(10)) + [chunk_item(6)]
    report = pipeline.process(batch)
    rows = stored(engine)
    assert len(rows) == 16 and not dead and {i.outcome for i in batch} == {Outcome.STORED}
    assert {r.status for r in rows} == {"error"}
    assert {r.error for r in rows} == {f"{ALONE}: {CUDA_OOM}"}
    # every row was tried alone once, and nothing larger after the first halves ran out
    assert Counter(wrapper.calls)[1] == 16
    assert pipeline.batch_limits.limit(model) == 1 and report.batch_limits == {("demo", 1): 1}


def test_one_request_too_big_alone_gets_an_error_and_the_limit_stays_useful(
    demo_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, pipeline, _, record = demo_pipeline
    model = pipeline.models.get(record)
    requests = demo_requests(40)
    huge = requests[17]["inputs"]
    real = LoadedModel.predict

    def predict(self: LoadedModel, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if huge in inputs:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return real(self, inputs)

    monkeypatch.setattr(LoadedModel, "predict", predict)
    pipeline.process(items(requests))
    rows = {r.request_id: r for r in stored(engine)}
    assert len(rows) == 40 and rows["r-17"].status == "error"
    assert rows["r-17"].error == f"{ALONE}: {CUDA_OOM}"
    assert sum(r.status == "ok" for r in rows.values()) == 39
    # the largest call that fitted: the half without it, not the single row
    assert pipeline.batch_limits.limit(model) == 20


def test_a_compiled_backend_keeps_to_its_warmed_up_buckets(
    demo_pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine, pipeline, _, record = demo_pipeline
    model, wrapper = loaded(pipeline, record, k=100)
    model.backend = "compiled"  # padded to buckets as a compiled module is (runner: eager)
    caplog.set_level(logging.WARNING, "workers.core.oom")
    pipeline.process(items(demo_requests(300)) + [chunk_item(300)])
    warmed = set(buckets(model.max_batch_size))
    assert set(wrapper.calls) <= warmed  # no shape the warm-up did not compile
    # 64 rows would pad back up to 128, which ran out: never tried; 32 is a bucket
    assert pipeline.batch_limits.limit(model) == 32
    assert wrapper.calls.count(128) == 2 and 64 not in wrapper.calls
    assert len(lowerings(caplog)) == 1
    assert len(stored(engine)) == 600 and {r.status for r in stored(engine)} == {"ok"}
    wrapper.calls.clear()
    pipeline.process(items(demo_requests(50, prefix="next")))
    assert wrapper.calls == [32, 32]  # 32 + 18 rows, the 18 padded to the 32 bucket


@dataclass
class Version:
    name: str = "m"
    version: int = 1
    backend: str = "eager"
    max_batch_size: int = 100


def test_sizes_are_counted_as_the_rows_the_runner_sees() -> None:
    eager, compiled = Version(name="e"), Version(backend="compiled")
    assert (call_rows(eager, 50), call_rows(compiled, 50), call_rows(compiled, 20)) == (50, 100, 32)
    assert (below(eager, 100), below(compiled, 100), below(compiled, 8), below(compiled, 1)) == (
        99,
        32,
        1,
        1,
    )
    fit = Fit(compiled)
    assert fit.worth_trying(100, None) and fit.ran_out(100) == 100
    assert not fit.worth_trying(50, 100) and fit.worth_trying(25, 100) and fit.worth_trying(1, 1)
    fit.succeeded(25)
    assert fit.new_limit() == 32
    limits = BatchLimits()
    with limits.search(compiled) as fit:
        fit.ran_out(1)  # a single row alone says nothing of the batch size
    assert limits.lowered() == {}
    with limits.search(compiled) as fit:
        fit.ran_out(8)  # nothing fitted: the bucket below
    assert limits.limit(compiled) == 1 and limits.limit(eager) == 100
    assert not limits.lower(compiled, 8, 100)  # never raised again


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(oom.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch in layer 2"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_the_batch_limit_gauge() -> None:
    metrics = WorkerMetrics("w")

    @dataclass
    class Loaded(Version):
        device: str = "cpu"

    metrics.model_loaded(Loaded(name="demo", max_batch_size=256), 0.1, 0.2)
    value = metrics.registry.get_sample_value
    assert value("scoring_batch_limit", {"model": "demo", "version": "1"}) == 256
    metrics.after_batch([], 0.01, BatchReport(stored=True, batch_limits={("demo", 1): 64}))
    assert value("scoring_batch_limit", {"model": "demo", "version": "1"}) == 64
    assert "scoring_batch_limit" in metrics.metric_names()
