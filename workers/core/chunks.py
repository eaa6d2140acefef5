"""Bulk chunks in the worker: decode, check every row column-wise, hand columns to the model.

A chunk (schemas/chunks.py) is many requests of one pinned model version. Its checks give
the same verdicts as `check_inputs` on each row, computed over whole columns: missing
values, NaN and infinity, over-long text. Only the rows found bad are looked at one by one,
by `check_inputs` itself, so their recorded reasons are the row path's own. A chunk whose
columns are not of the schema's types is turned back into request dicts and takes the row
path whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.chunks import (
    LABEL_COLUMN,
    REQUEST_ID_COLUMN,
    ChunkError,
    decode_chunk,
    max_label_chars,
)
from schemas.wire import DEFAULT_MAX_METADATA_BYTES, InputError, check_inputs, usable_request_id


@dataclass
class RowChunk:
    """A chunk as a task message delivered it; `rows` is None when it could not be read."""

    text: str
    model: str
    model_version: int | None
    deadline_ms: int | None
    rows: pa.RecordBatch | None = None
    error: str | None = None

    @classmethod
    def from_message(cls, kwargs: dict[str, Any]) -> RowChunk:
        """Read a task message's chunk; what is wrong with it goes to `error`."""
        chunk = cls(
            text=kwargs.get("chunk", ""),
            model=kwargs.get("model", ""),
            model_version=kwargs.get("model_version"),
            deadline_ms=kwargs.get("deadline_ms"),
        )
        try:
            chunk.error = _envelope_problem(chunk)
            if chunk.error is None:
                chunk.rows = decode_chunk(chunk.text)
        except ChunkError as exc:
            chunk.error = str(exc)
        return chunk

    @property
    def size(self) -> int:
        return self.rows.num_rows if self.rows is not None else 1

    def to_wire(self) -> dict[str, Any]:
        """The message fields, to re-publish the chunk or to park it as a dead letter."""
        return {
            "chunk": self.text,
            "model": self.model,
            "model_version": self.model_version,
            "deadline_ms": self.deadline_ms,
        }

    def requests(self) -> list[dict[str, Any]]:
        """The chunk as wire request dicts: the row path takes it from here."""
        assert self.rows is not None
        inputs = [n for n in self.rows.schema.names if n not in (REQUEST_ID_COLUMN, LABEL_COLUMN)]
        columns = {n: self.rows.column(n).to_pylist() for n in self.rows.schema.names}
        labels = columns.get(LABEL_COLUMN) or [None] * self.rows.num_rows
        out = []
        for i, request_id in enumerate(columns[REQUEST_ID_COLUMN]):
            request: dict[str, Any] = {
                "request_id": request_id,
                "model": self.model,
                "model_version": self.model_version,
                "inputs": {n: columns[n][i] for n in inputs},
            }
            if labels[i] is not None:
                request["metadata"] = {"label": labels[i]}
            if self.deadline_ms:
                request["deadline_ms"] = self.deadline_ms
            out.append(request)
        return out


def _envelope_problem(chunk: RowChunk) -> str | None:
    """What the request fields shared by the chunk's rows break of the wire rules."""
    if not isinstance(chunk.text, str):
        return "chunk is not text"
    if not isinstance(chunk.model, str) or not 1 <= len(chunk.model) <= 128:
        return f"chunk names no usable model: {chunk.model!r}"
    for name in ("model_version", "deadline_ms"):
        value = getattr(chunk, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"chunk {name} is not an integer: {value!r}"
        if value is not None and value < 1:
            return f"chunk {name} must be at least 1, not {value}"
    return None


@dataclass
class CheckedChunk:
    """A chunk's verdicts: `valid` rows go to the model with `columns` (those rows only);
    `invalid` maps a row's index to its reason."""

    ids: list[str]
    labels: list[str | None]
    valid: np.ndarray  # indices of valid rows
    columns: dict[str, Any]
    invalid: dict[int, str]
    digests: list[str] | None = None  # every row's inputs digest, once computed


def check_chunk(
    rows: pa.RecordBatch,
    schema: dict[str, str],
    max_text_chars: int,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
) -> CheckedChunk | None:
    """Check every row; None when the chunk's ids, labels or column types do not fit the
    wire rules or the schema (then it takes the row path, which says what is wrong row by
    row)."""
    column = rows.column(REQUEST_ID_COLUMN)
    if not pa.types.is_string(column.type) or column.null_count:
        return None
    ids = column.to_pylist()
    if not all(map(usable_request_id, ids)):
        return None
    if LABEL_COLUMN in rows.schema.names:
        labels = rows.column(LABEL_COLUMN)
        if not pa.types.is_string(labels.type):
            return None
        if labels.null_count < len(labels) and pc.max(
            pc.utf8_length(labels)
        ).as_py() > max_label_chars(max_metadata_bytes):
            return None
    bad = np.zeros(rows.num_rows, dtype=bool)
    for name, type_name in schema.items():
        if name not in rows.schema.names:
            return None
        flags = _bad_values(rows.column(name), type_name, max_text_chars)
        if flags is None:
            return None
        bad |= flags
    invalid: dict[int, str] = {}
    for index in np.flatnonzero(bad).tolist():
        row = {name: rows.column(name)[index].as_py() for name in schema}
        try:
            check_inputs(row, schema, max_text_chars)
        except InputError as exc:
            invalid[index] = str(exc)
    if invalid:
        keep = np.ones(rows.num_rows, dtype=bool)
        keep[list(invalid)] = False
        valid = np.flatnonzero(keep)
        taken = rows.take(pa.array(valid))
    else:
        valid, taken = np.arange(rows.num_rows), rows
    labels = (
        rows.column(LABEL_COLUMN).to_pylist()
        if LABEL_COLUMN in rows.schema.names
        else [None] * rows.num_rows
    )
    return CheckedChunk(
        ids=ids,
        labels=labels,
        valid=valid,
        columns={
            name: _values(taken.column(name), type_name) for name, type_name in schema.items()
        },
        invalid=invalid,
    )


def _bad_values(column: pa.Array, type_name: str, max_text_chars: int) -> np.ndarray | None:
    """Rows whose value `check_inputs` would refuse, or None for a column of the wrong type."""
    kind = column.type
    if type_name == "float" and pa.types.is_float64(kind) and not column.null_count:
        return ~np.isfinite(column.to_numpy())  # the common case, without a copy
    missing = column.is_null().to_numpy(zero_copy_only=False)
    if type_name == "float" and pa.types.is_float64(kind):
        values = column.fill_null(0.0).to_numpy(zero_copy_only=False)
        return missing | ~np.isfinite(values)
    if type_name == "int" and pa.types.is_int64(kind):
        return missing
    if type_name == "bool" and pa.types.is_boolean(kind):
        return missing
    if type_name == "str" and pa.types.is_string(kind):
        lengths = pc.utf8_length(column).fill_null(0).to_numpy(zero_copy_only=False)
        return missing | (lengths > max_text_chars)
    return None


def _values(column: pa.Array, type_name: str) -> Any:
    """A checked column as the model takes it: numpy for numbers, a list for text."""
    if type_name == "str":
        return column.to_pylist()
    return column.to_numpy(zero_copy_only=False)
