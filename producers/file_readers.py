"""Stream rows out of CSV, Parquet or JSON-lines files without loading the whole file."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_NUMBER_CHARS = 64  # longer text in a number field is no number, and is rejected

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def detect_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path}: unknown file type {path.suffix!r}; use .csv, .parquet or .jsonl"
        ) from None


def iter_rows(path: Path, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows as dicts, in file order. CSV values stay strings (see coerce_row)."""
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "parquet":
        yield from _parquet_rows(path)
    elif fmt == "jsonl":
        yield from _jsonl_rows(path)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the first column's
    # name. newline="": the csv module takes \r\n, \n and a lone \r as line ends, and keeps
    # a newline inside a quoted field.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            yield {k: (None if v == "" else v) for k, v in row.items()}


def _parquet_rows(path: Path, batch_rows: int = 8192) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """One row per line; a line that is not a JSON object, or not UTF-8, is an `__error__`
    row (rejected with its line number) and the lines after it are still read. Bytes that
    are not UTF-8 are kept as surrogates (surrogateescape) so that only their line fails,
    and a byte order mark before the first line is dropped."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                yield {"__error__": f"line {number}: not UTF-8 text"}
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                row = {"__error__": f"line {number}: not JSON ({exc.msg})"}
            yield row if isinstance(row, dict) else {"__error__": f"line {number}: not an object"}


def coerce_row(row: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    """Parse text values into the schema's types where they parse; leave the rest as they
    are (a number longer than 64 characters is no number), so that the worker rejects them
    with a precise reason."""
    out: dict[str, Any] = {}
    for name, type_name in schema.items():
        value = row.get(name)
        if (
            isinstance(value, str)
            and type_name in ("float", "int")
            and len(value) <= MAX_NUMBER_CHARS
        ):
            value = _parse_number(value, type_name)
        out[name] = value
    return out


def _parse_number(text: str, type_name: str) -> Any:
    """NaN and infinity parse as floats here and are rejected, with a reason, by the worker."""
    try:
        return float(text) if type_name == "float" else int(text)
    except ValueError:
        return text
