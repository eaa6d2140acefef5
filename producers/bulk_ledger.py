"""The ledger of a bulk run: which chunks went out, which have every result.

A chunk is recorded after the broker took it, in small groups (a producer killed between
the two publishes those chunks again on resume, and the upsert writes nothing twice).
Results carry their chunk's number, so a chunk whose rows do not all have a result is
found with two grouped counts, without reading any row back.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, func, select, update
from sqlmodel import col

from schemas.db import session_scope
from schemas.tables import BulkChunk, BulkDuplicate, BulkRun, ScoreResult, table_of

FLUSH_EVERY_S = 0.5
FLUSH_EVERY_CHUNKS = 64


class Ledger:
    """Buffers the chunks published and writes them, with the run's counts, in groups."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self._pending: list[dict[str, object]] = []
        self._flushed = time.monotonic()

    def published(self) -> set[int]:
        with self.engine.connect() as conn:
            query = select(table_of(BulkChunk).c.seq).where(
                table_of(BulkChunk).c.run_id == self.run_id
            )
            return set(conn.execute(query).scalars())

    def add(self, seq: int, rows: int, first_row: int, last_row: int) -> None:
        """Record chunk `seq`: `rows` requests from input rows `first_row`..`last_row`."""
        self._pending.append(
            {
                "run_id": self.run_id,
                "seq": seq,
                "rows": rows,
                "first_row": first_row,
                "last_row": last_row,
            }
        )
        if (
            len(self._pending) >= FLUSH_EVERY_CHUNKS
            or time.monotonic() - self._flushed > FLUSH_EVERY_S
        ):
            self.flush()

    def flush(self) -> tuple[int, int]:
        """Write what is pending; returns (chunks, rows) recorded for the run in all."""
        chunks = table_of(BulkChunk)
        runs = table_of(BulkRun)
        with self.engine.begin() as conn:
            if self._pending:
                conn.execute(chunks.insert(), self._pending)
                self._pending = []
            n, rows = conn.execute(
                select(func.count(), func.coalesce(func.sum(chunks.c.rows), 0)).where(
                    chunks.c.run_id == self.run_id
                )
            ).one()
            conn.execute(
                update(runs).where(runs.c.id == self.run_id).values(chunks=n, enqueued_rows=rows)
            )
        self._flushed = time.monotonic()
        return int(n), int(rows)


def incomplete_chunks(engine: Engine, run_id: str) -> list[int]:
    """Chunks of the ledger with fewer results (or duplicates of earlier runs) than rows."""
    with session_scope(engine) as session:
        expected = dict(
            session.execute(
                select(col(BulkChunk.seq), col(BulkChunk.rows)).where(
                    col(BulkChunk.run_id) == run_id
                )
            ).all()
        )
        done: dict[int, int] = {}
        for chunk_col, run_col, table in (
            (col(ScoreResult.bulk_chunk), col(ScoreResult.bulk_run_id), ScoreResult),
            (col(BulkDuplicate.chunk), col(BulkDuplicate.run_id), BulkDuplicate),
        ):
            counts = session.execute(
                select(chunk_col, func.count())
                .select_from(table)
                .where(run_col == run_id)
                .group_by(chunk_col)
            ).all()
            for seq, n in counts:
                if seq is not None:
                    done[seq] = done.get(seq, 0) + n
    return sorted(seq for seq, rows in expected.items() if done.get(seq, 0) < rows)


def mark_republished(engine: Engine, run_id: str, seqs: list[int]) -> None:
    chunks = table_of(BulkChunk)
    with engine.begin() as conn:
        conn.execute(
            update(chunks)
            .where(chunks.c.run_id == run_id, chunks.c.seq.in_(seqs))
            .values(republished=chunks.c.republished + 1)
        )


def describe_chunks(engine: Engine, run_id: str, seqs: list[int], shown: int = 5) -> str:
    """ "chunk 3 (input rows 769-1024), …" for a log line: where an operator finds them."""
    chunks = table_of(BulkChunk)
    with engine.connect() as conn:
        spans = conn.execute(
            select(chunks.c.seq, chunks.c.first_row, chunks.c.last_row)
            .where(chunks.c.run_id == run_id, chunks.c.seq.in_(seqs[:shown]))
            .order_by(chunks.c.seq)
        ).all()
    parts = [
        f"chunk {seq}" + (f" (input rows {first}-{last})" if first is not None else "")
        for seq, first, last in spans
    ]
    more = len(seqs) - len(parts)
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")
