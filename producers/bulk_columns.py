"""Bulk files read by column: CSV and Parquet as Arrow batches, typed by the model's input
schema and cut into chunks (see schemas/chunks.py).

Typing must give exactly what the row path (file_readers.coerce_row) gives, so a batch is
sent by columns only when Arrow can type every value of it the same way: numbers that
parse, ids that are usable, labels that fit in metadata. Any other batch goes back as row
dicts, and the worker then records each bad row with its precise reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from producers.bulk_inputs import BulkInput
from producers.file_readers import MAX_NUMBER_CHARS
from schemas.chunks import LABEL_COLUMN, REQUEST_ID_COLUMN, max_label_chars
from schemas.wire import usable_request_id

READ_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Slice:
    """`rows` of a file in file order; `first` is the 1-based number of its first row."""

    rows: pa.RecordBatch
    first: int


def read_slices(
    source: BulkInput, columns: list[str], size: int, rejections: list[str]
) -> Iterator[Slice]:
    """The named columns (nulls where the input lacks one), `size` rows at a time (the
    last may be shorter). CSV values stay text, as in the row path; a CSV line with the
    wrong number of fields is recorded in `rejections` and skipped."""
    batches = (
        _csv_batches(Path(source.location), columns, rejections)
        if source.kind == "csv"
        else source.batches(columns)
    )
    first, pending, held = 1, [], 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held < size:
            continue
        table = pa.Table.from_batches(pending).combine_chunks()
        start = 0
        while held - start >= size:
            yield Slice(_one_batch(table.slice(start, size)), first)
            first, start = first + size, start + size
        rest = table.slice(start)
        pending, held = ([_one_batch(rest)] if rest.num_rows else []), rest.num_rows
    if held:
        yield Slice(_one_batch(pa.Table.from_batches(pending).combine_chunks()), first)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """A non-empty table as one record batch."""
    return table.combine_chunks().to_batches()[0]


def _csv_batches(path: Path, columns: list[str], rejections: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    def ragged(row: Any) -> str:
        rejections.append(
            f"line {row.number}: {row.actual_columns} fields, expected {row.expected_columns}"
        )
        return "skip"

    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(use_threads=False, block_size=READ_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=ragged),
        convert_options=pcsv.ConvertOptions(
            include_columns=columns,
            include_missing_columns=True,
            column_types={name: pa.string() for name in columns},
            null_values=[""],  # "nan" stays a value, rejected by the worker as not finite
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    yield from reader


def typed_chunks(
    piece: Slice,
    size: int,
    schema: dict[str, str],
    run_id: str,
    id_column: str | None,
    label_column: str | None,
    label_chars: int | None = None,
) -> Iterator[Slice | pa.RecordBatch]:
    """Cut a slice into chunks of `size` rows, typed in one pass where the whole slice
    types (Arrow's kernels cost per call, not per row); else chunk by chunk, so one bad
    value sends only its own chunk (as a raw Slice) down the row path."""
    whole = typed_chunk(piece, schema, run_id, id_column, label_column, label_chars)
    for start in range(0, piece.rows.num_rows, size):
        if whole is not None:
            yield whole.slice(start, size)
            continue
        part = Slice(piece.rows.slice(start, size), piece.first + start)
        chunk = typed_chunk(part, schema, run_id, id_column, label_column, label_chars)
        yield part if chunk is None else chunk


def typed_chunk(
    piece: Slice,
    schema: dict[str, str],
    run_id: str,
    id_column: str | None,
    label_column: str | None,
    label_chars: int | None = None,
) -> pa.RecordBatch | None:
    """The slice as a chunk (request id, the schema's fields typed, label), or None when
    some value would not type exactly as the row path types it."""
    rows = piece.rows
    if id_column:
        ids = _ids(rows.column(id_column))
    else:
        numbers = range(piece.first, piece.first + rows.num_rows)
        ids = pa.array([f"{run_id}:{n}" for n in numbers], pa.string())
    if ids is None:
        return None
    arrays, names = [ids], [REQUEST_ID_COLUMN]
    for name, type_name in schema.items():
        typed = _typed(rows.column(name), type_name)
        if typed is None:
            return None
        arrays.append(typed)
        names.append(name)
    if label_column:
        label = _label(rows.column(label_column), label_chars or max_label_chars())
        if label is None:
            return None
        arrays.append(label)
        names.append(LABEL_COLUMN)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _ids(column: pa.Array) -> pa.Array | None:
    if not (pa.types.is_string(column.type) or pa.types.is_integer(column.type)):
        return None
    ids = column.cast(pa.string())
    if ids.null_count or not all(map(usable_request_id, ids.to_pylist())):
        return None
    return ids


def _typed(column: pa.Array, type_name: str) -> pa.Array | None:
    kind = column.type
    try:
        if type_name in ("float", "int"):
            target = pa.float64() if type_name == "float" else pa.int64()
            if pa.types.is_string(kind) and _longest(column) <= MAX_NUMBER_CHARS:
                return column.cast(target)
            if pa.types.is_integer(kind) or (type_name == "float" and pa.types.is_floating(kind)):
                return column.cast(target)  # safe cast: raises where a value would change
            return None
    except pa.ArrowInvalid:  # text that is no number, or a value that would change
        return None
    if type_name == "str" and pa.types.is_string(kind):
        return column
    if type_name == "bool" and pa.types.is_boolean(kind):
        return column
    return None


def _label(column: pa.Array, limit: int) -> pa.Array | None:
    if not (pa.types.is_string(column.type) or pa.types.is_integer(column.type)):
        return None
    labels = column.cast(pa.string())
    return labels if _longest(labels) <= limit else None


def _longest(column: pa.Array) -> int:
    if column.null_count == len(column):
        return 0
    return int(pc.max(pc.utf8_length(column)).as_py())
