"""`scoring bulk FILE`: enqueue a file for scoring, with a run record and progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from schemas import names
from scoring.cli.common import console, engine, err_console, fail, settings

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine

    from producers.run_summary import RunSummary
    from schemas.tables import BulkRun

REASONS_SHOWN = 5  # of a run's rejected rows and duplicate ids (20 are kept on the run)


def bulk(
    file: str = typer.Argument(
        None,
        help="A CSV, Parquet or JSON-lines file, or a directory or glob of Parquet files.",
        show_default=False,
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
    resume: str = typer.Option(
        None, "--resume", help="Publish what run RUN_ID's ledger lacks, from the same input."
    ),
    sql: str = typer.Option(None, "--sql", help="Score the rows of this query instead of FILE."),
    from_url: str = typer.Option(
        None, "--from", help="The database URL the --sql query runs on (never recorded)."
    ),
) -> None:
    """Stream FILE (or a query's rows) into chunked requests on Redis and record a bulk run.

    Exits 2 when nothing could start (no such file, an unknown model) or the --from
    database refused the connection or the query, and 1 when the run failed because its
    input cannot be read to its end (a truncated or corrupt file): one line names the
    input, what is wrong and how many rows went out before."""
    if status:
        _show_progress(status)
        return
    from producers import bulk as bulk_jobs
    from producers.run_summary import summarize
    from schemas.broker import celery_app

    s = settings()
    db = engine()
    app = celery_app(s.broker)
    if resume:
        try:
            run = bulk_jobs.resume(app, db, resume, url=from_url)
        except bulk_jobs.UnreadableInput as exc:
            fail(escape(str(exc)), code=names.EXIT_CHECK_FAILED)
        except ValueError as exc:
            fail(str(exc))
        console.print(f"run {run.id}: resumed, {run.enqueued_rows} rows enqueued in all")
        if wait:
            follow(db, run.id, app, s.batching.bulk_lease_s, from_url)
            print_summary(summarize(db, run.id))
        return
    if (file is None) == (sql is None) or model is None:
        fail("give a FILE or --sql QUERY --from URL, and --model NAME (or --status / --resume)")
    if sql is not None and not from_url:
        fail("--sql needs --from URL: the database the query runs on")
    from producers.bulk_inputs import BulkInput
    from workers.runtime import registry

    try:
        source = BulkInput.parse(file) if file is not None else BulkInput.query(sql, from_url)
    except ValueError as exc:
        fail(str(exc))

    record = registry.get_version(db, model, version)
    options = bulk_jobs.BulkOptions(
        chunk_size=chunk_size or s.batching.chunk_size,
        id_column=id_column,
        label_column=label_column,
        max_metadata_bytes=s.limits.max_metadata_bytes,
    )
    try:
        run = bulk_jobs.enqueue_file(app, db, source, record, options)
    except bulk_jobs.UnreadableInput as exc:
        usage = exc.refused_by_database  # a setting or the query to fix: 2; corrupt input: 1
        fail(escape(str(exc)), code=names.EXIT_USAGE if usage else names.EXIT_CHECK_FAILED)
    except ValueError as exc:
        fail(str(exc))
    dupes = (run.total_rows or 0) - run.enqueued_rows - run.rejected_rows
    console.print(
        f"run {run.id}: {run.enqueued_rows} rows enqueued for {model} v{record.version}"
        + (f", {run.rejected_rows} rejected" if run.rejected_rows else "")
        + (f", {dupes} duplicate ids (each id scored once)" if dupes else "")
        + ("" if run.total_rows else f": {source.describe()} has no rows"),
        highlight=False,
        soft_wrap=True,
    )
    _show_reasons(run)
    if not wait:
        return
    follow(db, run.id, app, s.batching.bulk_lease_s, from_url)
    print_summary(summarize(db, run.id))


def follow(
    db: Engine,
    run_id: str,
    app: Celery | None = None,
    lease_s: float = 120.0,
    url: str | None = None,
) -> None:
    """A progress bar until the run has a result for every enqueued row; with `app`,
    chunks that went missing are published again once the run is silent for `lease_s`."""
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
            db,
            run_id,
            lambda done, total: bar.update(task, completed=done, total=total),
            repair=None
            if app is None
            else lambda seqs: bulk_jobs.republish(app, db, run_id, seqs, url),
            lease_s=lease_s,
            queued=(lambda: 0) if app is None else lambda: bulk_jobs.queued(app),
        )


def _show_reasons(run: BulkRun) -> None:
    """The first reasons of a run's rejected rows and duplicate ids, on stderr."""
    reasons = (run.error or "").splitlines()
    if not reasons:
        return
    for reason in reasons[:REASONS_SHOWN]:
        err_console.print(f"  {escape(reason)}", highlight=False)
    left = run.total_rows - run.enqueued_rows - REASONS_SHOWN if run.total_rows else 0
    if left > 0:
        err_console.print(f"  … and {left} more (the first 20 are in bulk_runs.error)")


def print_summary(summary: RunSummary) -> None:
    from rich.table import Table

    table = Table("", "", title=f"run {summary.run_id}: {summary.model}", show_header=False)
    fmt = {"accuracy": "{:.2%}", "rows_per_s": "{:,.0f}"}
    for key, value in summary.as_dict().items():
        if key in ("run_id", "model") or (key == "duplicate_ids" and not value):
            continue  # duplicate ids: shown when the input had some
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
