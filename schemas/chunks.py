"""A bulk chunk on the wire: many rows of one model version as one Arrow record batch.

Bulk jobs send hundreds of rows per task message. As JSON request objects, every float is
printed by the producer and parsed by the worker, and every request is checked one by one:
that, not the model, was most of a bulk row's cost. A chunk instead carries its rows as
columns, in Arrow's IPC stream format (self-describing, no code runs to read it, so no
pickle), base64-encoded inside the JSON task message. Reserved columns carry each row's
request id and optional label; the others are the model's input fields by name.
"""

from __future__ import annotations

import base64
import binascii

import pyarrow as pa

from schemas.wire import DEFAULT_MAX_METADATA_BYTES

REQUEST_ID_COLUMN = "__request_id__"
LABEL_COLUMN = "__label__"
MAX_CHUNK_ROWS = 65_536


def max_label_chars(max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> int:
    """The longest label a chunk carries: {"label": ...} then fits the metadata limit in
    UTF-8 whatever the characters (a longer one takes the row path, where it is refused)."""
    return max(0, max_metadata_bytes // 4 - 16)


class ChunkError(ValueError):
    """A chunk that cannot be read: the reason goes to its dead letter."""


def encode_chunk(batch: pa.RecordBatch) -> str:
    """The batch as base64 text of one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def decode_chunk(text: str, max_rows: int = MAX_CHUNK_ROWS) -> pa.RecordBatch:
    """Read a chunk back; ChunkError says why one is unusable (not base64, not Arrow, more
    than one batch, too many rows, no request id column)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ChunkError(f"chunk is not base64: {exc}") from exc
    try:
        reader = pa.ipc.open_stream(raw)
        batches = list(reader)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise ChunkError(f"chunk is not an Arrow IPC stream: {exc}") from exc
    if len(batches) != 1:
        raise ChunkError(f"a chunk holds one record batch, this one {len(batches)}")
    batch = batches[0]
    if batch.num_rows > max_rows:
        raise ChunkError(f"chunk of {batch.num_rows} rows; at most {max_rows} allowed")
    if REQUEST_ID_COLUMN not in batch.schema.names:
        raise ChunkError(f"chunk has no {REQUEST_ID_COLUMN} column")
    return batch
