"""A bulk input as task messages: chunks of `chunk_size` rows, by column (one Arrow record
batch) where Arrow types a chunk exactly as the row path would, else as request dicts;
ids checked and repeated ids left out, the same way every time the input is read, so a
chunk's number stays its own (the ledger and `--resume` rely on it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from producers.bulk_columns import read_slices, typed_chunks
from producers.bulk_inputs import BulkInput
from producers.file_readers import coerce_row, iter_rows
from schemas.chunks import REQUEST_ID_COLUMN, max_label_chars
from schemas.tables import ModelVersion
from schemas.wire import DEFAULT_MAX_METADATA_BYTES, usable_request_id

TYPED_BLOCK_CHUNKS = 16  # chunks typed by Arrow in one pass


@dataclass(frozen=True)
class BulkOptions:
    chunk_size: int = 256
    id_column: str | None = None
    label_column: str | None = None
    deadline_ms: int | None = None
    # SCORING_MAX_METADATA_BYTES: a label column longer than fits sends its chunk as rows.
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES


@dataclass(frozen=True)
class Message:
    """One chunk's task payload and the input rows it spans (1-based, data rows only;
    rows left out inside the span are rejected or repeated ids), kept in the ledger."""

    payload: pa.RecordBatch | list[dict[str, Any]]
    first_row: int
    last_row: int

    @property
    def rows(self) -> int:
        p = self.payload
        return len(p) if isinstance(p, list) else p.num_rows


def messages(
    source: Path | BulkInput,
    model: ModelVersion,
    options: BulkOptions,
    run_id: str,
    rejections: list[str],
    duplicates: list[str] | None = None,
) -> Iterator[pa.RecordBatch | list[dict[str, Any]]]:
    """The payloads of `numbered_messages`."""
    for message in numbered_messages(source, model, options, run_id, rejections, duplicates):
        yield message.payload


def numbered_messages(
    source: Path | BulkInput,
    model: ModelVersion,
    options: BulkOptions,
    run_id: str,
    rejections: list[str],
    duplicates: list[str] | None = None,
) -> Iterator[Message]:
    """Chunks of `chunk_size` rows: by column where the input is columnar and Arrow types
    a chunk exactly as the row path would, else as request dicts. Rows whose id an earlier
    row has are left out, their reasons in `duplicates` (in `rejections` without it): the
    same rows every time the input is read, so a chunk's number stays its own."""
    if not isinstance(source, BulkInput):
        source = BulkInput.parse(source)
    reasons = rejections if duplicates is None else duplicates
    # Default ids (RUN_ID:ROW_NUMBER) are unique by construction: only an id column repeats.
    seen = _SeenIds(reasons) if options.id_column else None
    if not source.columnar:
        numbered = enumerate(iter_rows(Path(source.location), source.kind), start=1)
        yield from _chunks(_requests(numbered, model, options, run_id, rejections, seen), options)
        return
    schema = dict(model.input_schema)
    wanted = [*schema, *(c for c in (options.id_column, options.label_column) if c)]
    columns = list(dict.fromkeys(wanted))
    label_chars = max_label_chars(options.max_metadata_bytes)
    typing = (schema, run_id, options.id_column, options.label_column, label_chars)
    for block in read_slices(source, columns, TYPED_BLOCK_CHUNKS * options.chunk_size, rejections):
        first = block.first  # the row number of the chunk's first row
        for chunk in typed_chunks(block, options.chunk_size, *typing):
            if isinstance(chunk, pa.RecordBatch):
                fresh = chunk if seen is None else seen.keep(chunk, first)
                span = (first, first + chunk.num_rows - 1)
                first += chunk.num_rows
                if fresh.num_rows:
                    yield Message(fresh, *span)
                continue
            first += chunk.rows.num_rows
            numbered = enumerate(chunk.rows.to_pylist(), start=chunk.first)
            kept = list(_requests(numbered, model, options, run_id, rejections, seen))
            if kept:
                yield Message([r for _, r in kept], kept[0][0], kept[-1][0])


@dataclass
class _SeenIds:
    """The ids of an input's rows so far (held in memory, about 80 bytes a row): a row
    repeating one is a duplicate id, with its reason; the first row with an id is scored."""

    reasons: list[str]
    ids: set[str] = field(default_factory=set)

    def fresh(self, request_id: str, number: int) -> bool:
        if request_id in self.ids:
            self.reasons.append(
                f"row {number}: duplicate id {request_id!r} (an earlier row has it; "
                "that row is scored, this one is not)"
            )
            return False
        self.ids.add(request_id)
        return True

    def keep(self, chunk: pa.RecordBatch, first: int) -> pa.RecordBatch:
        """The chunk without its rows whose id came before (in it or earlier)."""
        ids = chunk.column(REQUEST_ID_COLUMN).to_pylist()
        new = set(ids)
        if len(new) == len(ids) and self.ids.isdisjoint(new):  # the usual case, at C speed
            self.ids |= new
            return chunk
        mask = [self.fresh(request_id, first + i) for i, request_id in enumerate(ids)]
        return chunk.filter(pa.array(mask))


def _requests(
    rows: Iterator[tuple[int, dict[str, Any]]],
    model: ModelVersion,
    options: BulkOptions,
    run_id: str,
    rejections: list[str],
    seen: _SeenIds | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(input row number, request) of each usable row."""
    for number, row in rows:
        if options.id_column:
            raw = row.get(options.id_column)
            request_id = None if raw is None else str(raw)
        else:
            request_id = f"{run_id}:{number}"
        problem = row.get("__error__") or (
            None
            if request_id is not None and usable_request_id(request_id)
            else f"row {number}: unusable id {request_id!r}"
        )
        if problem:
            rejections.append(problem)
            continue
        assert request_id is not None
        if seen is not None and not seen.fresh(request_id, number):
            continue
        request: dict[str, Any] = {
            "request_id": request_id,
            "model": model.name,
            "model_version": model.version,
            "inputs": coerce_row(row, model.input_schema),
        }
        if options.label_column and row.get(options.label_column) is not None:
            request["metadata"] = {"label": str(row[options.label_column])}
        if options.deadline_ms:
            request["deadline_ms"] = options.deadline_ms
        yield number, request


def _chunks(
    requests: Iterator[tuple[int, dict[str, Any]]], options: BulkOptions
) -> Iterator[Message]:
    chunk: list[tuple[int, dict[str, Any]]] = []
    for numbered in requests:
        chunk.append(numbered)
        if len(chunk) == options.chunk_size:
            yield Message([r for _, r in chunk], chunk[0][0], chunk[-1][0])
            chunk = []
    if chunk:
        yield Message([r for _, r in chunk], chunk[0][0], chunk[-1][0])
