"""`scoring bulk FILE`: enqueue a file for scoring; `scoring status`: runs and progress."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import select

from producers import bulk as bulk_jobs
from producers.run_summary import RunSummary, summarize
from schemas.db import session_scope
from schemas.tables import BulkRun
from scoring.cli.common import console, engine, fail, settings
from workers import registry


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
    s = settings()
    db = engine()
    try:
        record = registry.get_version(db, model, version)
    except registry.RegistryError as exc:
        fail(str(exc))
    from workers.celery_app import create_app

    options = bulk_jobs.BulkOptions(
        chunk_size=chunk_size or s.chunk_size, id_column=id_column, label_column=label_column
    )
    try:
        run = bulk_jobs.enqueue_file(create_app(s), db, file, record, options)
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
    table = Table("", "", title=f"run {summary.run_id}: {summary.model}", show_header=False)
    fmt = {"accuracy": "{:.2%}", "rows_per_s": "{:,.0f}"}
    for key, value in summary.as_dict().items():
        if key in ("run_id", "model"):
            continue
        shown = "n/a" if value is None else fmt.get(key, "{}").format(value)
        table.add_row(key.replace("_", " "), shown)
    console.print(table)


def _show_progress(run_id: str) -> None:
    try:
        done, total = bulk_jobs.progress(engine(), run_id)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"run {run_id}: {done}/{total} rows have results")
    if done >= total:
        print_summary(summarize(engine(), run_id))


def status(
    kafka: bool = typer.Option(
        None, "--kafka/--no-kafka", help="Kafka consumer lag (default: if the broker answers)."
    ),
) -> None:
    """Recent bulk runs and their progress, and Kafka consumer lag per partition."""
    db = engine()
    with session_scope(db) as session:
        runs = session.exec(select(BulkRun).order_by(BulkRun.started_at.desc()).limit(10)).all()
    table = Table("run", "model", "status", "rows", "rejected", "started")
    for run in runs:
        table.add_row(
            run.id,
            f"{run.model_name} v{run.model_version}",
            run.status,
            str(run.enqueued_rows),
            str(run.rejected_rows),
            run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    from scoring.cli.stream import show_kafka_lag

    show_kafka_lag(kafka)
