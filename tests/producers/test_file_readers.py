"""Bulk input is streamed from CSV, Parquet and JSON lines, with values typed by schema."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producers.file_readers import coerce_row, detect_format, iter_rows

ROWS = [{"id": "a", "x": 1.5, "n": 2}, {"id": "b", "x": -3.0, "n": 7}]


def test_csv_rows_come_back_as_text_and_coerce_by_schema(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,x,n\na,1.5,2\nb,abc,\nc,nan,3\n")
    rows = list(iter_rows(path))
    assert rows[0] == {"id": "a", "x": "1.5", "n": "2"}
    schema = {"x": "float", "n": "int"}
    assert coerce_row(rows[0], schema) == {"x": 1.5, "n": 2}
    assert coerce_row(rows[1], schema) == {"x": "abc", "n": None}
    assert str(coerce_row(rows[2], schema)["x"]) == "nan"


def test_parquet_is_read_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS * 5000), path, row_group_size=1000)
    rows = iter_rows(path)
    assert next(rows) == ROWS[0]
    assert sum(1 for _ in rows) == 9999


def test_json_lines_keep_going_past_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n\n[1]\n" + json.dumps(ROWS[1]) + "\n")
    rows = list(iter_rows(path))
    assert rows[0] == ROWS[0] and rows[3] == ROWS[1]
    assert rows[1]["__error__"].startswith("line 2: not JSON")
    assert rows[2] == {"__error__": "line 4: not an object"}


def test_an_unknown_extension_says_which_are_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use .csv, .parquet or .jsonl"):
        detect_format(tmp_path / "data.xlsx")
