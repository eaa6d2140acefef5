"""The demo job: the production task and batching code on SQLite and an in-process broker."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery.contrib.testing.worker import start_worker
from rich.console import Console

from producers import bulk as bulk_jobs
from producers.run_summary import RunSummary, summarize
from schemas.db import make_engine, upgrade
from scoring import constants as c
from scoring.demo_model import build_artifact, write_csv
from scoring.settings import Settings
from workers import registry
from workers.celery_app import create_app


def ensure_demo_model(settings: Settings, workdir: Path, console: Console) -> None:
    """Train and register the demo classifier as version 1 unless a version is active."""
    engine = make_engine(settings.database_url)
    if c.DEMO_MODEL in registry.active_versions(engine):
        return
    console.print("training the demo classifier (breast cancer data, seeded)…")
    artifact = build_artifact(workdir / "demo-artifact")
    record = registry.register(engine, settings.model_store, c.DEMO_MODEL, artifact)
    if record.status != c.VERSION_ACTIVE:
        registry.promote(engine, c.DEMO_MODEL, record.version, detail="demo")
    console.print(f"registered {c.DEMO_MODEL} v{record.version}")


def run_demo(
    rows: int, database_url: str, workdir: Path, seed: int, console: Console
) -> RunSummary:
    settings = Settings(database_url=database_url, broker_url="memory://localhost/")
    upgrade(settings.database_url)
    ensure_demo_model(settings, workdir, console)
    engine = make_engine(settings.database_url)
    model = registry.get_version(engine, c.DEMO_MODEL)
    data = write_csv(workdir / "demo.csv", rows, seed)
    app = create_app(settings)
    logging.getLogger("celery").setLevel(logging.WARNING)
    from scoring.cli.bulk import follow, print_summary

    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=60,
        hostname=f"demo@{c.DEMO_MODEL}",
    ):
        app.scoring_context.get().warm_up()  # type: ignore[attr-defined]
        started = time.perf_counter()
        run = bulk_jobs.enqueue_file(
            app,
            engine,
            data,
            model,
            bulk_jobs.BulkOptions(
                chunk_size=settings.chunk_size, id_column=None, label_column="label"
            ),
        )
        console.print(
            f"run {run.id}: {run.enqueued_rows:,} rows enqueued in "
            f"{time.perf_counter() - started:.1f}s"
        )
        follow(engine, run.id)
        app.scoring_context.close()  # type: ignore[attr-defined]
    summary = summarize(engine, run.id)
    print_summary(summary)
    return summary
