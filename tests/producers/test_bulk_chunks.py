"""Bulk chunks by column: the producer types a file with Arrow exactly as the row path
would, and the worker stores, for every row, the same result the row path stores."""

from __future__ import annotations

import csv
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlmodel import select

from producers import bulk, bulk_messages
from schemas.chunks import (
    LABEL_COLUMN,
    REQUEST_ID_COLUMN,
    ChunkError,
    decode_chunk,
    encode_chunk,
)
from schemas.db import make_engine, session_scope, upgrade
from schemas.tables import ScoreResult, utcnow
from schemas.wire import InputError, check_inputs
from workers.core.chunks import RowChunk, check_chunk
from workers.core.pipeline import ScoringPipeline
from workers.core.sink import ResultSink
from workers.runtime import registry
from workers.runtime.loaded import ModelCache
from workers.runtime.models.demo.build import write_csv
from workers.sources.base import Outcome, WorkItem

SCHEMA = {"x": "float", "n": "int", "s": "str", "b": "bool"}


@pytest.fixture
def setup(demo_pipeline):  # type: ignore[no-untyped-def]
    return demo_pipeline


def messages(path: Path, record: Any, chunk_size: int = 256, **options: Any) -> list[Any]:
    rejections: list[str] = []
    opts = bulk.BulkOptions(chunk_size=chunk_size, **options)
    return list(bulk_messages.messages(path, record, opts, "run1", rejections)) + [rejections]


def as_items(found: list[Any], record: Any, deadline_ms: int | None = None) -> list[WorkItem]:
    """What the Celery task makes of each message: one item per chunk or per request."""
    out = []
    for message in found:
        if isinstance(message, pa.RecordBatch):
            text = encode_chunk(message)
            payload: Any = RowChunk.from_message(
                {
                    "chunk": text,
                    "model": record.name,
                    "model_version": record.version,
                    "deadline_ms": deadline_ms,
                }
            )
            out.append(WorkItem(payload, "bulk", utcnow(), "run1", size=payload.size))
        else:
            out += [WorkItem(p, "bulk", utcnow(), "run1") for p in message]
    return out


def stored(engine) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return {
            r.request_id: (r.status, r.error, r.outputs, r.meta)
            for r in session.exec(select(ScoreResult)).all()
        }


def dirty_csv(path: Path, rows: int = 600) -> tuple[Path, str]:
    """Demo rows with one bad value of every kind, spread over three chunks."""
    write_csv(path, rows, seed=4)
    lines = list(csv.reader(path.open()))
    header, body = lines[0], lines[1:]
    body[10][1] = ""  # missing
    body[20][1] = "nan"  # not finite, but a number: the chunk still goes by column
    body[30][1] = "-inf"
    body[300][1] = "twelve"  # not a number: this chunk goes by rows
    body[310][1] = "9" * 80  # too long to be a number
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    return path, header[1]


def test_a_clean_csv_goes_by_column_with_the_row_paths_values(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 600, seed=1)
    *found, rejections = messages(data, record, id_column="id", label_column="label")
    assert rejections == [] and [type(m) for m in found] == [pa.RecordBatch] * 3
    assert [m.num_rows for m in found] == [256, 256, 88]
    first_row = next(csv.DictReader(data.open()))
    chunk = found[0]
    assert chunk.column(REQUEST_ID_COLUMN)[0].as_py() == first_row["id"]
    assert chunk.column(LABEL_COLUMN)[0].as_py() == first_row["label"]
    for name in record.input_schema:
        assert chunk.column(name)[0].as_py() == float(first_row[name])
        assert chunk.schema.field(name).type == pa.float64()


def test_default_ids_number_the_rows_of_the_file(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 600, seed=1)
    *found, _ = messages(data, record, chunk_size=100)
    ids = [i for m in found for i in m.column(REQUEST_ID_COLUMN).to_pylist()]
    assert ids == [f"run1:{n}" for n in range(1, 601)]


def test_each_message_names_the_input_rows_it_spans(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 600, seed=1)
    lines = [
        json.dumps({k: (v if k in ("id", "label") else float(v)) for k, v in row.items()})
        for row in csv.DictReader(data.open())
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    dirty, _ = dirty_csv(tmp_path / "dirty.csv")  # its second chunk goes by rows
    expected = [(1, 256, 256), (257, 512, 256), (513, 600, 88)]
    for path in (data, tmp_path / "rows.jsonl", dirty):
        opts = bulk.BulkOptions(id_column="id")
        found = list(bulk_messages.numbered_messages(path, record, opts, "run1", []))
        assert [(m.first_row, m.last_row, m.rows) for m in found] == expected, path.name
    assert [type(m.payload) for m in found] == [pa.RecordBatch, list, pa.RecordBatch]


def test_only_the_chunk_holding_text_in_a_number_column_goes_by_rows(
    tmp_path: Path,
    setup,  # type: ignore[no-untyped-def]
) -> None:
    _, _, _, record = setup
    data, field = dirty_csv(tmp_path / "rows.csv")
    *found, _ = messages(data, record, id_column="id")
    assert [type(m).__name__ for m in found] == ["RecordBatch", "list", "RecordBatch"]
    assert len(found[1]) == 256 and found[1][44]["inputs"][field] == "twelve"


def test_column_path_and_row_path_store_the_same_results(  # type: ignore[no-untyped-def]
    tmp_path: Path, setup, demo_artifact: Path
) -> None:
    engine, pipeline, dead, record = setup
    data, field = dirty_csv(tmp_path / "rows.csv")
    *found, _ = messages(data, record, id_column="id", label_column="label")
    pipeline.process(as_items(found, record))
    by_column = stored(engine)

    upgrade(f"sqlite:///{tmp_path / 'rows.db'}")
    other = make_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    other_record = registry.register(other, tmp_path / "store2", "demo", demo_artifact)
    rows_only = ScoringPipeline(other, ResultSink(other), ModelCache(), pipeline.config)
    options = bulk.BulkOptions(id_column="id", label_column="label")
    numbered = enumerate(csv.DictReader(data.open()), start=1)
    cleaned = ({k: (None if v == "" else v) for k, v in row.items()} for _, row in numbered)
    numbered_requests = bulk_messages._requests(
        enumerate(cleaned, 1), other_record, options, "run1", []
    )
    requests = [request for _, request in numbered_requests]
    rows_only.process([WorkItem(r, "bulk", utcnow(), "run1") for r in requests])
    by_row = stored(other)

    assert len(by_column) == 600 and not dead
    assert by_column == by_row
    invalid = {k: v[1] for k, v in by_column.items() if v[0] == "invalid"}
    assert invalid == {
        "row-10": f"{field}: missing",
        "row-20": f"{field}: not a finite number (nan)",
        "row-30": f"{field}: not a finite number (-inf)",
        "row-300": f"{field}: expected float, got str 'twelve'",
        "row-310": f"{field}: value too long (80 chars, at most 50)",
    }
    assert by_column["row-0"][3] == {"label": by_column["row-0"][3]["label"]}


def test_a_ragged_csv_line_is_rejected_with_its_line_number(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 20, seed=1)
    lines = data.read_text().splitlines()
    lines[5] = "row-4,1.0,2.0"
    data.write_text("\n".join(lines) + "\n")
    *found, rejections = messages(data, record, id_column="id")
    assert sum(m.num_rows for m in found) == 19
    assert len(rejections) == 1 and rejections[0].startswith("line 6: 3 fields, expected")


def test_parquet_columns_type_by_schema_or_go_by_rows(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    names = list(record.input_schema)
    ints = {n: pa.array([1, 2, 3], pa.int32()) for n in names}
    good = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], **ints}), good)
    *found, _ = messages(good, record, id_column="id")
    assert isinstance(found[0], pa.RecordBatch)
    assert found[0].column(names[0]).to_pylist() == [1.0, 2.0, 3.0]

    bools = tmp_path / "bools.parquet"
    pq.write_table(pa.table({"id": ["a"], **{n: [True] for n in names}}), bools)
    *found, _ = messages(bools, record, id_column="id")
    assert isinstance(found[0], list)  # the row path says "expected float, got bool"


def test_unusable_ids_are_rejected_by_the_row_path(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    _, _, _, record = setup
    names = list(record.input_schema)
    path = tmp_path / "ids.parquet"
    pq.write_table(
        pa.table({"id": ["ok-1", "bad id", None], **{n: [1.0, 2.0, 3.0] for n in names}}), path
    )
    *found, rejections = messages(path, record, id_column="id")
    assert [r["request_id"] for m in found for r in m] == ["ok-1"]
    assert rejections == ["row 2: unusable id 'bad id'", "row 3: unusable id None"]


def test_check_chunk_gives_check_inputs_verdicts() -> None:
    values = {
        "x": [1.5, None, math.nan, math.inf, 2.0, 3.0],
        "n": [1, 2, None, 4, 5, 6],
        "s": ["a", "b", "c", "d", "e" * 11, None],
        "b": [True, False, True, None, False, True],
    }
    ids = pa.array([f"r{i}" for i in range(6)])
    rows = pa.RecordBatch.from_arrays(
        [ids, *(pa.array(v) for v in values.values())], names=[REQUEST_ID_COLUMN, *values]
    )
    checked = check_chunk(rows, SCHEMA, max_text_chars=10)
    assert checked is not None
    for i in range(6):
        row = {k: v[i] for k, v in values.items()}
        try:
            check_inputs(row, SCHEMA, 10)
            assert i in checked.valid.tolist()
        except InputError as exc:
            assert checked.invalid[i] == str(exc)
    assert checked.valid.tolist() == [0]
    assert checked.columns["x"].tolist() == [1.5]


def test_a_chunk_of_other_types_or_bad_ids_is_not_checked_by_column() -> None:
    def batch(ids: list[Any], x: pa.Array) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(ids), x], names=[REQUEST_ID_COLUMN, "x"])

    assert check_chunk(batch(["a"], pa.array(["1.5"])), {"x": "float"}, 10) is None
    assert check_chunk(batch(["a b"], pa.array([1.5])), {"x": "float"}, 10) is None
    assert check_chunk(batch(["a"], pa.array([1.5])), {"y": "float"}, 10) is None
    assert check_chunk(batch(["a"], pa.array([1.5])), {"x": "float"}, 10) is not None


def test_labels_too_long_for_metadata_send_the_chunk_down_the_row_path() -> None:
    def batch(label: str) -> pa.RecordBatch:
        columns = [pa.array(["a"]), pa.array([1.5]), pa.array([label])]
        return pa.RecordBatch.from_arrays(columns, names=[REQUEST_ID_COLUMN, "x", LABEL_COLUMN])

    assert check_chunk(batch("benign"), {"x": "float"}, 10) is not None
    assert check_chunk(batch("l" * 5000), {"x": "float"}, 10) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": 7}, "chunk names no usable model: 7"),
        ({"model_version": "1"}, "chunk model_version is not an integer: '1'"),
        ({"model_version": 0}, "chunk model_version must be at least 1, not 0"),
        ({"deadline_ms": True}, "chunk deadline_ms is not an integer: True"),
    ],
)
def test_a_chunk_with_bad_shared_fields_is_refused(fields: dict[str, Any], reason: str) -> None:
    rows = pa.RecordBatch.from_arrays([pa.array(["a"])], names=[REQUEST_ID_COLUMN])
    message = {"chunk": encode_chunk(rows), "model": "demo", "model_version": 1, **fields}
    chunk = RowChunk.from_message(message)
    assert chunk.rows is None and chunk.error == reason


def test_unreadable_chunks_say_why() -> None:
    rows = pa.RecordBatch.from_arrays([pa.array(["a", "b"])], names=[REQUEST_ID_COLUMN])
    assert decode_chunk(encode_chunk(rows)).equals(rows)
    with pytest.raises(ChunkError, match="not base64"):
        decode_chunk("%%%")
    with pytest.raises(ChunkError, match="not an Arrow IPC stream"):
        decode_chunk("aGVsbG8=")
    with pytest.raises(ChunkError, match="at most 1 allowed"):
        decode_chunk(encode_chunk(rows), max_rows=1)
    no_ids = pa.RecordBatch.from_arrays([pa.array([1])], names=["x"])
    with pytest.raises(ChunkError, match="no __request_id__ column"):
        decode_chunk(encode_chunk(no_ids))


def test_chunk_items_that_cannot_be_scored_are_dead_lettered(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, dead, record = setup
    broken = RowChunk.from_message({"chunk": "%%%", "model": "demo", "model_version": 1})
    item = WorkItem(broken, "bulk", utcnow(), "run1")
    data = write_csv(tmp_path / "rows.csv", 3, seed=1)
    *found, _ = messages(data, record, id_column="id")
    unknown = as_items(found, record)[0]
    unknown.payload.model = "nope"
    pipeline.process([item, unknown])
    assert item.outcome is Outcome.DEAD and "not base64" in (item.reason or "")
    # an unknown model: each row is dead-lettered as the row path would, with its id
    assert [d.payload["request_id"] for d in dead[1:]] == ["row-0", "row-1", "row-2"]
    reason = "model 'nope' has no version 1; see `scoring models list`"
    assert {d.reason for d in dead[1:]} == {reason}
    assert stored(engine) == {}


def test_a_chunk_past_its_deadline_is_recorded_as_expired(tmp_path: Path, setup) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 5, seed=1)
    *found, _ = messages(data, record, id_column="id")
    items = as_items(found, record, deadline_ms=1)
    items[0].enqueued_at = utcnow() - timedelta(seconds=5)
    pipeline.process(items)
    assert {v[:2] for v in stored(engine).values()} == {("expired", "deadline of 1 ms passed")}


def test_a_model_failure_in_a_chunk_is_isolated_to_its_row(  # type: ignore[no-untyped-def]
    tmp_path: Path, setup, monkeypatch
) -> None:
    engine, pipeline, _, record = setup
    data = write_csv(tmp_path / "rows.csv", 40, seed=1)
    *found, _ = messages(data, record, id_column="id")
    field = next(iter(record.input_schema))
    poison = found[0].column(field)[7].as_py()
    model = pipeline.models.get(record)
    real = model.predict

    def fails_on_poison(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(row[field] == poison for row in inputs):
            raise RuntimeError("bad row")
        return real(inputs)

    def columns_fail(columns: dict[str, Any], n: int) -> list[dict[str, Any]]:
        raise RuntimeError("batch failed")

    monkeypatch.setattr(model, "predict_columns", columns_fail)
    monkeypatch.setattr(model, "predict", fails_on_poison)
    pipeline.process(as_items(found, record))
    results = stored(engine)
    assert len(results) == 40
    assert results["row-7"][:2] == ("error", "model failed: bad row")
    assert sum(v[0] == "ok" for v in results.values()) == 39
