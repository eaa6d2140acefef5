"""Where a bulk run's rows come from: one file, a Parquet dataset, or a SQL query.

Each kind streams Arrow record batches of the columns asked for (nulls where the input
lacks one), in an order that is the same every time it is read, and has an identity
(a size and a sha256) that a resumed run checks before it publishes anything:

- a CSV, Parquet or JSON-lines file: its bytes;
- a Parquet dataset (a directory, or a glob of files; hive partitions such as
  `day=2026-12-01/` become columns, usable as id or label columns): the sorted file
  list with each file's size and sha256, read in that order;
- a query (`--sql … --from URL`): its text, streamed with a server-side cursor
  (`stream_results`), so it is never loaded whole. A resumed query must return the same
  rows in the same order: give it an ORDER BY on a key.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from producers.file_readers import detect_format
from schemas.redaction import keep_secret, url_password

SQL_FETCH_ROWS = 8192
GLOB_CHARS = frozenset("*?[")


class QueryFailed(ValueError):
    """The `--from` database refused the connection or the query: a setting or the query
    to fix (exit 2), not an input that is corrupt."""


@dataclass(frozen=True)
class BulkInput:
    kind: str  # csv | parquet | jsonl | dataset | sql
    location: str  # the path, directory or glob; or the query's text
    url: str | None = None  # the query's database: never recorded (it may hold a password)

    @classmethod
    def parse(cls, spec: str | Path) -> BulkInput:
        """A file, a directory of Parquet files, or a glob of them."""
        text = str(spec)
        path = Path(text)
        if GLOB_CHARS & set(text):
            if not dataset_files(text):
                raise ValueError(f"{text}: no Parquet file matches")
            return cls("dataset", text)
        if path.is_dir():
            if not dataset_files(text):
                raise ValueError(f"{text}: a directory without Parquet files")
            return cls("dataset", text)
        if not path.is_file():
            raise ValueError(f"{text}: no such file")
        return cls(detect_format(path), text)

    @classmethod
    def query(cls, sql: str, url: str) -> BulkInput:
        if not sql.strip():
            raise ValueError("--sql needs a query")
        keep_secret(url_password(url))  # masked in every error this process shows or stores
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except ArgumentError:
            raise ValueError(
                "--from: not a database URL (dialect+driver://user:password@host/db)"
            ) from None
        return cls("sql", sql, url)

    @property
    def columnar(self) -> bool:
        return self.kind != "jsonl"

    def describe(self) -> str:
        """What `bulk_runs.input` records."""
        return f"sql: {self.location}" if self.kind == "sql" else self.location

    def identity(self) -> tuple[int, str]:
        """(size, sha256) of what the run reads; the same input gives the same pair."""
        if self.kind == "sql":
            data = self.location.encode("utf-8")
            return len(data), hashlib.sha256(data).hexdigest()
        if self.kind == "dataset":
            digest, total = hashlib.sha256(), 0
            base = _base(self.location)
            for file in dataset_files(self.location):
                size, sha = file_identity(file)
                total += size
                digest.update(f"{file.relative_to(base)}\0{size}\0{sha}\n".encode())
            return total, digest.hexdigest()
        return file_identity(Path(self.location))

    def batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The columnar kinds' rows (CSV is read by bulk_columns, which knows its text)."""
        if self.kind == "parquet":
            return _parquet_file(Path(self.location), columns)
        if self.kind == "dataset":
            return _dataset(self.location, columns)
        if self.kind == "sql":
            return _query(self.location, self.url or "", columns)
        raise ValueError(f"{self.kind} is not read by column here")


def file_identity(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def dataset_files(spec: str) -> list[Path]:
    """The Parquet files of a directory (recursively) or a glob, sorted: the read order."""
    if GLOB_CHARS & set(spec):
        found = [Path(p) for p in glob.glob(spec, recursive=True)]
    else:
        found = list(Path(spec).rglob("*"))
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in (".parquet", ".pq"))


def _base(spec: str) -> Path:
    """The directory hive partitions are read below (a glob's part before its first
    wildcard)."""
    if not GLOB_CHARS & set(spec):
        return Path(spec)
    parts = Path(spec).parts
    plain = [p for p in parts[: next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))]]
    return Path(*plain) if plain else Path(".")


def _fit(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    names = batch.schema.names
    arrays = [batch.column(c) if c in names else pa.nulls(batch.num_rows) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _parquet_file(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    # Pages written with a CRC (write_page_checksum) are checked: a flipped bit fails the
    # read instead of scoring a wrong value. Pages without one cannot be checked.
    with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
        present = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=8192, columns=present):
            yield _fit(batch, columns)


def _dataset(spec: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.dataset as ds

    files = [str(p) for p in dataset_files(spec)]
    dataset = ds.dataset(
        files, format="parquet", partitioning="hive", partition_base_dir=str(_base(spec))
    )
    present = [c for c in columns if c in dataset.schema.names]
    checked = ds.ParquetFragmentScanOptions(page_checksum_verification=True)
    # One fragment (file) after the other, in the sorted order: the same every time.
    for fragment in dataset.get_fragments():
        scanner = ds.Scanner.from_fragment(
            fragment,
            schema=dataset.schema,
            columns=present,
            use_threads=False,
            fragment_scan_options=checked,
        )
        try:
            for batch in scanner.to_batches():
                yield _fit(batch, columns)
        except (pa.ArrowException, OSError) as exc:  # say which file of the dataset
            raise pa.ArrowInvalid(f"{fragment.path}: {exc}") from exc


def _query(sql: str, url: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The query's rows through a server-side cursor, SQL_FETCH_ROWS at a time. A database
    error is a ValueError naming `--from` (left as it is, it would be taken for one of
    SCORING_DATABASE_URL, which the CLI explains as such)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from schemas.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(
                stream_results=True, max_row_buffer=SQL_FETCH_ROWS
            ).execute(text(sql))
            names = list(result.keys())
            for rows in result.partitions(SQL_FETCH_ROWS):
                data = {n: [row[i] for row in rows] for i, n in enumerate(names)}
                yield _fit(pa.RecordBatch.from_pydict(data), columns)
    except SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise QueryFailed(f"on the --from database: {first}") from exc
    finally:
        engine.dispose()
