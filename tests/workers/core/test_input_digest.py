"""Raw inputs stay out of the results table unless retained: every row keeps the sha256
of its inputs (the documented canonical JSON), the same on the row and the column path;
with SCORING_RETAIN_INPUTS the inputs themselves are kept too."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from sqlmodel import select

from schemas.db import session_scope
from schemas.tables import ScoreResult, utcnow
from tests.helpers import demo_requests
from tests.workers.core.test_oom import chunk_item
from workers.core.input_digest import digest, storable
from workers.sources.base import WorkItem


def documented(inputs: dict[str, Any]) -> str:
    """The formula the README gives."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def rows(engine: Any) -> dict[str, ScoreResult]:
    with session_scope(engine) as session:
        return {r.request_id: r for r in session.exec(select(ScoreResult)).all()}


def test_rows_keep_the_inputs_digest_and_not_the_inputs(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = demo_pipeline
    requests = demo_requests(20)
    bad = dict(demo_requests(1, prefix="bad")[0])
    bad["inputs"] = {**bad["inputs"], "mean_radius": "not a number"}
    pipeline.process([WorkItem(r, "redis", utcnow()) for r in [*requests, bad]])
    stored = rows(engine)
    assert len(stored) == 21
    for request in [*requests, bad]:
        row = stored[request["request_id"]]
        assert row.inputs is None
        assert row.inputs_sha256 == documented(request["inputs"])
    assert stored["bad-0"].status == "invalid"  # a rejected request keeps its digest too


def test_a_bulk_row_has_the_digest_its_request_would_have(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = demo_pipeline
    chunk = chunk_item(40, prefix="c")
    pipeline.process([chunk])
    as_requests = chunk.payload.requests()  # the same rows as wire requests
    stored = rows(engine)
    assert len(stored) == 40
    for request in as_requests:
        row = stored[request["request_id"]]
        assert row.inputs is None and row.status == "ok"
        assert row.inputs_sha256 == documented(request["inputs"])


def test_retained_inputs_are_kept_on_both_paths(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = demo_pipeline
    pipeline.config.retain_inputs = True
    requests = demo_requests(5)
    nan = dict(demo_requests(1, prefix="nan")[0])
    nan["inputs"] = {**nan["inputs"], "mean_radius": math.nan}
    chunk = chunk_item(7, prefix="c")
    pipeline.process([WorkItem(r, "redis", utcnow()) for r in [*requests, nan]] + [chunk])
    stored = rows(engine)
    assert len(stored) == 13
    for request in requests + chunk.payload.requests():
        assert stored[request["request_id"]].inputs == request["inputs"]
    assert stored["nan-0"].status == "invalid"
    assert stored["nan-0"].inputs["mean_radius"] == "nan"  # JSON columns hold no NaN
    assert stored["nan-0"].inputs_sha256 == digest(nan["inputs"])


def test_storable_turns_non_finite_floats_into_text_at_any_depth() -> None:
    value = {"a": [1.0, math.inf, {"b": -math.inf}], "c": math.nan, "d": "x"}
    assert storable(value) == {"a": [1.0, "inf", {"b": "-inf"}], "c": "nan", "d": "x"}
