"""Raw inputs stay out of the results table unless retained: every row keeps the sha256
of its inputs (the documented canonical JSON), the same on the row and the column path;
with SCORING_RETAIN_INPUTS the inputs themselves are kept too."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

from sqlmodel import select

from schemas.db import session_scope
from schemas.tables import ScoreResult, utcnow
from tests.helpers import demo_requests
from tests.workers.core.test_oom import chunk_item
from workers.core.input_digest import column_digests, digest, storable
from workers.sources.base import WorkItem


def documented(inputs: dict[str, Any], schema: dict[str, str]) -> str:
    """The typed form the README gives, written out independently (floats only: demo)."""
    state = hashlib.sha256(b"scoring-inputs-v1\0")
    names = sorted(schema)
    for name in names:
        state.update(f"{name}:{schema[name]}\0".encode())
    state.update(b"".join(struct.pack("<d", float(inputs[name])) for name in names))
    return state.hexdigest()


def as_json(inputs: dict[str, Any]) -> str:
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def rows(engine: Any) -> dict[str, ScoreResult]:
    with session_scope(engine) as session:
        return {r.request_id: r for r in session.exec(select(ScoreResult)).all()}


def test_rows_keep_the_inputs_digest_and_not_the_inputs(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, record = demo_pipeline
    schema = record.input_schema
    requests = demo_requests(20)
    bad = dict(demo_requests(1, prefix="bad")[0])
    bad["inputs"] = {**bad["inputs"], "mean_radius": "not a number"}
    pipeline.process([WorkItem(r, "redis", utcnow()) for r in [*requests, bad]])
    stored = rows(engine)
    assert len(stored) == 21
    for request in requests:
        row = stored[request["request_id"]]
        assert row.inputs is None
        assert row.inputs_sha256 == documented(request["inputs"], schema)
    # a rejected request keeps a digest too: of its canonical JSON (it fits no type)
    assert stored["bad-0"].status == "invalid" and stored["bad-0"].inputs is None
    assert stored["bad-0"].inputs_sha256 == as_json(bad["inputs"])


def test_a_bulk_row_has_the_digest_its_request_would_have(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, record = demo_pipeline
    chunk = chunk_item(40, prefix="c")
    pipeline.process([chunk])
    as_requests = chunk.payload.requests()  # the same rows as wire requests
    stored = rows(engine)
    assert len(stored) == 40
    for request in as_requests:
        row = stored[request["request_id"]]
        assert row.inputs is None and row.status == "ok"
        assert row.inputs_sha256 == documented(request["inputs"], record.input_schema)


def test_retained_inputs_are_kept_on_both_paths(demo_pipeline) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, record = demo_pipeline
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
    assert stored["nan-0"].inputs_sha256 == digest(nan["inputs"], record.input_schema)


def test_storable_turns_non_finite_floats_into_text_at_any_depth() -> None:
    value = {"a": [1.0, math.inf, {"b": -math.inf}], "c": math.nan, "d": "x"}
    assert storable(value) == {"a": [1.0, "inf", {"b": "-inf"}], "c": "nan", "d": "x"}


def test_the_typed_digest_covers_every_type_and_falls_back_to_json() -> None:
    schema = {"a": "float", "b": "int", "c": "bool", "d": "str"}
    inputs = {"a": 1.5, "b": 7, "c": True, "d": "héllo"}
    expected = hashlib.sha256(
        b"scoring-inputs-v1\0a:float\0b:int\0c:bool\0d:str\0"
        + struct.pack("<d", 1.5)
        + struct.pack("<q", 7)
        + b"\1"
        + struct.pack("<I", 6)
        + "héllo".encode()
    ).hexdigest()
    assert digest(inputs, schema) == expected
    assert digest({**inputs, "a": 3}, schema) == digest({**inputs, "a": 3.0}, schema)
    assert digest({**inputs, "extra": 1}, schema) == expected  # the model's fields only
    assert digest({**inputs, "b": "7"}, schema) == as_json({**inputs, "b": "7"})
    assert digest({"a": 1.5}, schema) == as_json({"a": 1.5})  # missing fields


def test_columns_give_the_digests_rows_give() -> None:
    import numpy as np

    schema = {"x": "float", "n": "int", "flag": "bool"}
    columns = {
        "x": np.array([0.1, -2.0, 1e300]),
        "n": np.array([1, -5, 2**40]),
        "flag": np.array([True, False, True]),
    }
    rows = [{k: v[i].item() for k, v in columns.items()} for i in range(3)]
    assert column_digests(columns, schema, 3) == [digest(r, schema) for r in rows]
    text = {"t": "str", "x": "float"}
    cols = {"t": ["a", "bb"], "x": np.array([1.0, 2.0])}
    assert column_digests(cols, text, 2) == [
        digest({"t": "a", "x": 1.0}, text),
        digest({"t": "bb", "x": 2.0}, text),
    ]
