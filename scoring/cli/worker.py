"""`scoring worker`: Celery worker process(es) on CPUs or pinned to GPUs."""

from __future__ import annotations

import os

import typer

from scoring.cli.common import fail, settings
from workers.launcher import LaunchError, plan_workers, run_many, run_one


def worker(
    cpu: int = typer.Option(None, "--cpu", help="Start N CPU worker processes (default 1)."),
    gpus: str = typer.Option(None, "--gpus", help="Comma-separated GPU indices, one process each."),
    queues: str = typer.Option(None, "--queues", help="Queues to consume (default: requests)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    one: bool = typer.Option(False, "--one", hidden=True, help="Run a single worker here."),
) -> None:
    """Score requests from Redis with micro-batches; one model copy per process."""
    s = settings()
    queue_list = [q for q in (queues or s.requests_queue).split(",") if q]
    if one:
        from workers.celery_app import create_app

        run_one(create_app(s), os.environ.get("SCORING_WORKER_NAME", "cpu0"), queue_list, loglevel)
        return
    try:
        plans = plan_workers(cpu, gpus)
    except LaunchError as exc:
        fail(str(exc))
    argv = ["worker", "--one", f"--queues={','.join(queue_list)}", f"--loglevel={loglevel}"]
    raise typer.Exit(run_many(plans, argv))
