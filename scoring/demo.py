"""The demo job: the production task and batching code on SQLite and an in-process broker."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr
from rich.console import Console

from schemas import names as c
from schemas.settings import BrokerSettings, DatabaseSettings, RuntimeSettings, Settings

if TYPE_CHECKING:
    from producers.run_summary import RunSummary


def demo_settings(database_url: str) -> Settings:
    """Embedded defaults: the given SQLite file and Celery's in-memory broker."""
    return Settings(
        database=DatabaseSettings(url=SecretStr(database_url)),
        broker=BrokerSettings(url=SecretStr("memory://localhost/")),
        runtime=RuntimeSettings(worker_name=f"demo@{c.DEMO_MODEL}"),
    )


def ensure_demo_model(settings: Settings, workdir: Path, console: Console) -> None:
    """Train and register the demo classifier as version 1 unless a version is active."""
    from schemas.db import make_engine
    from workers.runtime import registry
    from workers.runtime.models.demo.build import build_artifact

    engine = make_engine(settings.database.sqlalchemy_url())
    if c.DEMO_MODEL in registry.active_versions(engine):
        return
    console.print("training the demo classifier (breast cancer data, seeded)…")
    artifact = build_artifact(workdir / "demo-artifact")
    record = registry.register(engine, settings.runtime.model_store, c.DEMO_MODEL, artifact)
    if record.status != c.VERSION_ACTIVE:
        registry.promote(engine, c.DEMO_MODEL, record.version, detail="demo")
    console.print(f"registered {c.DEMO_MODEL} v{record.version}")


def run_demo(
    rows: int, database_url: str, workdir: Path, seed: int, console: Console
) -> RunSummary:
    """Score `rows` synthetic rows end to end; return the run's summary."""
    began = time.perf_counter()
    from celery.contrib.testing.worker import start_worker

    from producers import bulk as bulk_jobs
    from producers.run_summary import summarize
    from schemas.db import make_engine, upgrade
    from scoring.cli.bulk import follow, print_summary
    from workers.process import WorkerProcess, celery_worker_app
    from workers.runtime import registry
    from workers.runtime.models.demo.build import write_csv

    settings = demo_settings(database_url)
    upgrade(settings.database.sqlalchemy_url())
    ensure_demo_model(settings, workdir, console)
    engine = make_engine(settings.database.sqlalchemy_url())
    model = registry.get_version(engine, c.DEMO_MODEL)
    data = write_csv(workdir / "demo.csv", rows, seed)
    process = WorkerProcess(settings)
    process.start()  # loads and warms up the model before the clock starts
    app = celery_worker_app(process)
    # Nothing is buffered once every row has its result: stop at once, not after the
    # soft-shutdown grace period a production worker keeps for its buffered messages.
    app.conf.worker_soft_shutdown_timeout = 0.0
    logging.getLogger("celery").setLevel(logging.WARNING)
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=60,
        hostname=process.name,
    ):
        console.print(f"start-up {time.perf_counter() - began:.1f}s (imports, model, worker)")
        started = time.perf_counter()
        run = bulk_jobs.enqueue_file(
            app,
            engine,
            data,
            model,
            bulk_jobs.BulkOptions(
                chunk_size=settings.batching.chunk_size, id_column=None, label_column="label"
            ),
        )
        console.print(
            f"run {run.id}: {run.enqueued_rows:,} rows enqueued in "
            f"{time.perf_counter() - started:.1f}s"
        )
        follow(engine, run.id, app, settings.batching.bulk_lease_s)
    process.close()
    summary = summarize(engine, run.id)
    print_summary(summary)
    return summary
