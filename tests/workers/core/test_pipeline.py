"""The pipeline turns any source's items into stored results, reasons and dead letters."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from schemas.db import session_scope
from schemas.tables import BatchMetric, ScoreResult, utcnow
from tests.helpers import count_results, demo_requests
from workers.core.pipeline import PipelineConfig, ScoringPipeline
from workers.core.sink import ResultSink
from workers.runtime import registry
from workers.runtime.loaded import LoadedModel, ModelCache
from workers.sources.base import Outcome, WorkItem


@pytest.fixture
def setup(demo_pipeline):  # type: ignore[no-untyped-def]
    return demo_pipeline


def items(payloads: list, source: str = "redis") -> list[WorkItem]:
    return [WorkItem(payload=p, source=source, enqueued_at=utcnow()) for p in payloads]


def results(engine) -> dict[str, ScoreResult]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return {r.request_id: r for r in session.exec(select(ScoreResult)).all()}


def test_valid_requests_are_scored_with_full_lineage(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, dead, record = setup
    batch = items(demo_requests(300, metadata={"tenant": "a"}))
    pipeline.process(batch)
    stored = results(engine)
    assert len(stored) == 300 and not dead
    assert {i.outcome for i in batch} == {Outcome.STORED}
    row = stored["r-0"]
    assert row.status == "ok" and row.outputs["label"] in ("malignant", "benign")
    assert 0.5 <= row.outputs["score"] <= 1.0
    assert (row.model_version, row.artifact_sha256) == (1, record.artifact_sha256)
    assert (row.backend, row.device, row.worker, row.source) == (
        "eager",
        "cpu",
        "test-worker",
        "redis",
    )
    assert row.batch_id and row.meta == {"tenant": "a"} and row.inference_ms > 0
    with session_scope(engine) as session:
        metrics = session.exec(select(BatchMetric)).all()
    # 300 requests, max batch size 256: two model batches, one metrics row each.
    assert sorted(m.batch_size for m in metrics) == [44, 256]
    assert {m.source_mix["redis"] for m in metrics} == {44, 256}


def test_a_redelivered_batch_writes_nothing_new(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = setup
    payloads = demo_requests(50)
    pipeline.process(items(payloads))
    pipeline.process(items(payloads + payloads[:10]))
    assert count_results(engine) == 50


def test_bad_inputs_get_invalid_rows_and_the_rest_are_scored(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, dead, _ = setup
    good = demo_requests(5)
    field = next(iter(good[0]["inputs"]))
    bad = [dict(r, request_id=f"bad-{i}") for i, r in enumerate(demo_requests(5, seed=1))]
    del bad[0]["inputs"][field]
    bad[1]["inputs"][field] = "abc"
    bad[2]["inputs"][field] = math.nan
    bad[3]["inputs"][field] = math.inf
    bad[4]["inputs"][field] = "x" * 51
    pipeline.process(items(good + bad))
    stored = results(engine)
    assert [stored[f"r-{i}"].status for i in range(5)] == ["ok"] * 5
    reasons = [stored[f"bad-{i}"].error for i in range(5)]
    assert all(stored[f"bad-{i}"].status == "invalid" for i in range(5))
    assert reasons[0] == f"{field}: missing"
    assert "expected float, got str 'abc'" in reasons[1]
    assert "not a finite number (nan)" in reasons[2] and "(inf)" in reasons[3]
    assert "value too long" in reasons[4]
    assert not dead


def test_requests_that_cannot_be_keyed_become_dead_letters(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, dead, _ = setup
    good = demo_requests(2)
    batch = items(
        [
            b"{not json",
            b"\xff\xfe",
            json.dumps([1, 2]),
            {"request_id": "bad id!", "model": "demo", "inputs": {}},
            {"request_id": "x1", "model": "nope", "inputs": {}},
            {"request_id": "x2", "model": "demo", "model_version": 9, "inputs": {}},
            *good,
        ]
    )
    pipeline.process(batch)
    assert count_results(engine) == 2
    reasons = [d.reason for d in dead]
    assert len(dead) == 6 and [i.outcome for i in batch].count(Outcome.DEAD) == 6
    assert reasons[0].startswith("not JSON") and reasons[1].startswith("not UTF-8")
    assert "expected a JSON object" in reasons[2] and "request_id" in reasons[3]
    assert "no active version" in reasons[4] and "no version 9" in reasons[5]


def test_a_request_over_the_byte_limit_is_dead_lettered_before_it_is_parsed(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, dead, _ = setup
    pipeline.config.max_request_bytes = 2_000
    fits, big = demo_requests(2)
    big["metadata"] = {"blob": "x" * 3_000}
    batch = items([json.dumps(fits).encode(), json.dumps(big).encode()], source="kafka")
    pipeline.process(batch)
    assert count_results(engine) == 1
    assert len(dead) == 1 and dead[0].payload == batch[1].payload
    reason = dead[0].reason
    assert reason.startswith("request of ") and "SCORING_MAX_REQUEST_BYTES" in reason


def test_a_passed_deadline_is_recorded_as_expired(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = setup
    late = WorkItem(
        payload=demo_requests(1, deadline_ms=1000)[0],
        source="kafka",
        enqueued_at=utcnow() - timedelta(seconds=5),
    )
    pipeline.process([late])
    row = results(engine)["r-0"]
    assert row.status == "expired" and "deadline of 1000 ms" in row.error


def test_a_model_failure_is_isolated_to_the_request_that_caused_it(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = setup
    requests = demo_requests(40)
    poison = requests[17]["inputs"]
    real_predict = LoadedModel.predict

    def predict(self, inputs):  # type: ignore[no-untyped-def]
        if poison in inputs:
            raise RuntimeError("shape mismatch in layer 2")
        return real_predict(self, inputs)

    monkeypatch.setattr(LoadedModel, "predict", predict)
    pipeline.process(items(requests))
    stored = results(engine)
    assert len(stored) == 40
    assert stored["r-17"].status == "error"
    assert stored["r-17"].error == "model failed: shape mismatch in layer 2"
    assert sum(r.status == "ok" for r in stored.values()) == 39


def test_the_pipeline_hands_each_stored_item_its_result_row(
    sqlite_url: str, tmp_path: Path, demo_artifact: Path
) -> None:
    from schemas.db import make_engine

    engine = make_engine(sqlite_url)
    registry.register(engine, tmp_path / "store", "demo", demo_artifact)
    pipeline = ScoringPipeline(engine, ResultSink(engine), ModelCache(), PipelineConfig())
    good = demo_requests(3)
    bad = dict(good[0], request_id="bad", inputs={})
    items = [
        WorkItem(payload=json.dumps(p).encode(), source="kafka", enqueued_at=utcnow())
        for p in [*good, bad]
    ] + [WorkItem(payload=b"{nope", source="kafka")]
    pipeline.process(items)
    assert [i.outcome for i in items] == [Outcome.STORED] * 4 + [Outcome.DEAD]
    assert [i.result["status"] for i in items[:4]] == ["ok", "ok", "ok", "invalid"]  # type: ignore[index]
    assert items[0].result["request_id"] == "r-0" and items[0].result["outputs"]["label"]  # type: ignore[index]
    assert items[4].result is None
