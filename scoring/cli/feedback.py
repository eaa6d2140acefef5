"""`scoring feedback FILE`: ground-truth labels for results scored earlier (CSV, Parquet
or JSON lines with request_id, label and optionally model), upserted into `feedback`;
accuracy then shows in `scoring status`, `scoring drift`, the report and the metrics.
Streaming ground truth goes to the feedback topic instead (read by every Kafka consumer)."""

from __future__ import annotations

from pathlib import Path

import typer

from scoring.cli.common import console, engine, fail


def feedback(
    file: Path = typer.Argument(
        ..., help="CSV, Parquet or JSON lines: request_id, label[, model]."
    ),
    model: str = typer.Option(None, "--model", help="The model, for rows that name none."),
) -> None:
    """Store ground-truth labels (request_id, label) for results scored earlier."""
    from producers.file_readers import iter_rows
    from workers.core.feedback import FeedbackCounts, check_record, store_feedback

    if not file.exists():
        fail(f"{file}: no such file")
    db, total, read = engine(), FeedbackCounts(), 0
    batch: list[dict] = []
    try:
        for record in iter_rows(file):
            read += 1
            if "__error__" in record:
                total.reject(str(record["__error__"]))
                continue
            row, reason = check_record(record, model)
            if row is None:
                total.reject(f"row {read}: {reason}")
                continue
            batch.append(row)
            if len(batch) >= 5000:
                total.add(store_feedback(db, batch))
                batch = []
        if batch:
            total.add(store_feedback(db, batch))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        fail(f"{file}: {exc}")
    console.print(f"feedback: {read} rows read, {total.stored} stored, {total.rejected} rejected")
    for reason in total.reasons:
        console.print(f"  rejected: {reason}", highlight=False)
