"""What a result row keeps of its request's inputs: their sha256 always, the inputs
themselves only when an operator retains them (SCORING_RETAIN_INPUTS).

Inputs are often personal data; results are read by many (reports, BI, feedback joins).
The digest still answers "was this exact input scored, and to what?": it is the sha256 of
the inputs object as canonical JSON (keys sorted, no spaces, UTF-8, floats as Python
prints them), so anyone holding the input can compute it:

    hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":"),
                   ensure_ascii=False).encode()).hexdigest()

A bulk row's inputs are its model's input columns as that object.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa


def canonical(inputs: Any) -> bytes:
    """The bytes the digest is taken of (NaN and infinity as JSON's extension)."""
    return json.dumps(
        inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8", errors="surrogatepass")


def digest(inputs: Any) -> str:
    return hashlib.sha256(canonical(inputs)).hexdigest()


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
