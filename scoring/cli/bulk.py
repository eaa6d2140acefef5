"""`scoring bulk FILE`: enqueue a file for scoring, with a run record and progress."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from scoring.cli.common import console, engine, fail, settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from producers.run_summary import RunSummary


def bulk(
    file: Path = typer.Argument(
        None, exists=True, dir_okay=False, help="CSV, Parquet or JSON-lines file."
    ),
    model: str = typer.Option(None, "--model", help="Registered model name."),
    version: int = typer.Option(None, "--version", help="Model version (default: active)."),
    chunk_size: int = typer.Option(None, "--chunk-size", help="Rows per task message."),
    id_column: str = typer.Option(None, "--id-column", help="Column holding each row's id."),
    label_column: str = typer.Option(
        None, "--label-column", help="Column with true labels, for the accuracy line."
    ),
    wait: bool = typer.Option(False, "--wait", help="Show progress until every row is scored."),
    status: str = typer.Option(None, "--status", help="Show the progress of run RUN_ID."),
) -> None:
    """Stream FILE into chunked requests on Redis and record a bulk run."""
    if status:
        _show_progress(status)
        return
    if file is None or model is None:
        fail("give a FILE and --model NAME (or --status RUN_ID)")
    from producers import bulk as bulk_jobs
    from producers.run_summary import summarize
    from schemas.broker import celery_app
    from workers.runtime import registry

    s = settings()
    db = engine()
    record = registry.get_version(db, model, version)
    options = bulk_jobs.BulkOptions(
        chunk_size=chunk_size or s.batching.chunk_size,
        id_column=id_column,
        label_column=label_column,
        max_metadata_bytes=s.limits.max_metadata_bytes,
    )
    try:
        run = bulk_jobs.enqueue_file(celery_app(s.broker), db, file, record, options)
    except ValueError as exc:
        fail(str(exc))
    console.print(
        f"run {run.id}: {run.enqueued_rows} rows enqueued for {model} "
        f"v{record.version}" + (f", {run.rejected_rows} rejected" if run.rejected_rows else "")
    )
    if not wait:
        return
    follow(db, run.id)
    print_summary(summarize(db, run.id))


def follow(db: Engine, run_id: str) -> None:
    """A progress bar until the run has a result for every enqueued row."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from producers import bulk as bulk_jobs

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"scoring {run_id}", total=None)
        bulk_jobs.wait(
            db, run_id, lambda done, total: bar.update(task, completed=done, total=total)
        )


def print_summary(summary: RunSummary) -> None:
    from rich.table import Table

    table = Table("", "", title=f"run {summary.run_id}: {summary.model}", show_header=False)
    fmt = {"accuracy": "{:.2%}", "rows_per_s": "{:,.0f}"}
    for key, value in summary.as_dict().items():
        if key in ("run_id", "model"):
            continue
        shown = "n/a" if value is None else fmt.get(key, "{}").format(value)
        table.add_row(key.replace("_", " "), shown)
    console.print(table)


def _show_progress(run_id: str) -> None:
    from producers import bulk as bulk_jobs
    from producers.run_summary import summarize

    db = engine()
    try:
        done, total = bulk_jobs.progress(db, run_id)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"run {run_id}: {done}/{total} rows have results")
    if done >= total:
        print_summary(summarize(db, run_id))
