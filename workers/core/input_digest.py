"""What a result row keeps of its request's inputs: their sha256 always, the inputs
themselves only when an operator retains them (SCORING_RETAIN_INPUTS).

Inputs are often personal data; results are read by many (reports, BI, feedback joins).
The digest still answers "was this exact input scored, and to what?". It is typed, so that
a bulk chunk's rows are hashed from their columns at about a microsecond a row (hashing
canonical JSON cost 20 µs a row, most of it printing floats, and a third of bulk
throughput): sha256 over `scoring-inputs-v1\\0`, then `name:type\\0` for each field of the
model's input schema in name order, then each field's value in that order (float: 8-byte
little-endian IEEE 754; int: 8-byte little-endian; bool: one byte; str: 4-byte
little-endian length, then UTF-8). Inputs whose values do not fit the schema's types (a
request rejected as invalid) are hashed as canonical JSON instead (keys sorted, no
spaces). `digest(inputs, schema)` computes either; the row path and the column path give
the same digest for the same inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from workers.core.chunks import CheckedChunk

TAG = b"scoring-inputs-v1\0"
_MISSING = object()


@functools.lru_cache(maxsize=64)
def _prefix(fields: tuple[tuple[str, str], ...]) -> Any:
    state = hashlib.sha256(TAG)
    for name, type_name in fields:
        state.update(f"{name}:{type_name}\0".encode())
    return state


def _fields(schema: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(schema.items()))


def _encode(type_name: str, value: Any) -> bytes | None:
    """One value in the typed form, or None where it does not fit `type_name`."""
    if isinstance(value, bool):
        return (b"\1" if value else b"\0") if type_name == "bool" else None
    if type_name == "float" and isinstance(value, int | float):
        try:
            return struct.pack("<d", float(value))
        except OverflowError:
            return None
    if type_name == "int" and isinstance(value, int) and -(2**63) <= value < 2**63:
        return struct.pack("<q", value)
    if type_name == "str" and isinstance(value, str):
        data = value.encode("utf-8", errors="surrogatepass")
        return struct.pack("<I", len(data)) + data
    return None


def json_digest(inputs: Any) -> str:
    """sha256 of `inputs` as canonical JSON: the form for inputs that fit no schema."""
    text = json.dumps(
        inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def digest(inputs: Any, schema: dict[str, str]) -> str:
    """The digest of one request's inputs for a model with input schema `schema`."""
    if isinstance(inputs, dict):
        fields = _fields(schema)
        parts = [_encode(t, inputs.get(name, _MISSING)) for name, t in fields]
        if all(part is not None for part in parts):
            state = _prefix(fields).copy()
            state.update(b"".join(parts))  # type: ignore[arg-type]
            return str(state.hexdigest())
    return json_digest(inputs)


def column_digests(columns: dict[str, Any], schema: dict[str, str], n: int) -> list[str]:
    """The digests of `n` checked rows given as columns (numpy arrays for numbers, lists
    for text, as workers/core/chunks.py hands them to the model)."""
    fields = _fields(schema)
    if n == 0:
        return []
    if any(t == "str" for _, t in fields):  # text: row by row (the model is the cost)
        lists = {name: _as_list(columns[name]) for name, _ in fields}
        return [digest({name: lists[name][i] for name, _ in fields}, schema) for i in range(n)]
    blocks = []
    for name, type_name in fields:
        values = np.asarray(columns[name])
        if type_name == "float":
            blocks.append(values.astype("<f8").view(np.uint8).reshape(n, 8))
        elif type_name == "int":
            blocks.append(values.astype("<i8").view(np.uint8).reshape(n, 8))
        else:
            blocks.append(values.astype(np.uint8).reshape(n, 1))
    matrix = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    width, data, base = matrix.shape[1], memoryview(matrix.tobytes()), _prefix(fields)
    out = []
    for start in range(0, n * width, width):
        state = base.copy()
        state.update(data[start : start + width])
        out.append(state.hexdigest())
    return out


def chunk_digests(rows: pa.RecordBatch, checked: CheckedChunk, schema: dict[str, str]) -> list[str]:
    """Every row's inputs digest, computed once per chunk: the valid rows from their checked
    columns, the others (few) from what was sent."""
    if checked.digests is None:
        valid = checked.valid.tolist()
        out = [""] * rows.num_rows
        for index, found in zip(
            valid, column_digests(checked.columns, schema, len(valid)), strict=True
        ):
            out[index] = found
        others = [i for i, found in enumerate(out) if not found]
        for index, sent in zip(others, chunk_inputs(rows, schema, others), strict=True):
            out[index] = digest(sent, schema)
        checked.digests = out
    return checked.digests


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def chunk_inputs(rows: pa.RecordBatch, names: Iterable[str], indices: Any) -> list[dict[str, Any]]:
    """The inputs objects of rows `indices` of a bulk chunk: its columns among `names`."""
    present = [n for n in names if n in rows.schema.names]
    return rows.select(present).take(pa.array(indices, type=pa.int64())).to_pylist()


def storable(value: Any) -> Any:
    """`value` as a JSON column can hold it: NaN and infinity (which PostgreSQL refuses)
    become their text, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
