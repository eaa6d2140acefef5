"""`scoring worker`: Celery worker process(es) on CPUs or pinned to GPUs."""

from __future__ import annotations

import os

import typer

from scoring.cli.common import fail, settings
from scoring.settings import Settings
from workers.launcher import LaunchError, plan_workers, run_many, run_one


def worker(
    cpu: int = typer.Option(
        None, "--cpu", help="Start N CPU worker processes (default: one per GPU, else 1 CPU)."
    ),
    gpus: str = typer.Option(None, "--gpus", help="Comma-separated GPU indices, one process each."),
    queues: str = typer.Option(None, "--queues", help="Queues to consume (default: requests)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    kafka: bool = typer.Option(
        False, "--kafka", help="Also consume the Kafka topic in each process (same model copy)."
    ),
    one: bool = typer.Option(False, "--one", hidden=True, help="Run a single worker here."),
) -> None:
    """Score requests from Redis (and Kafka with --kafka) in micro-batches; one model copy each."""
    s = settings()
    if kafka:
        s = _with_kafka(s)
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
    argv += ["--kafka"] if kafka else []
    raise typer.Exit(run_many(plans, argv))


def _with_kafka(s: Settings) -> Settings:
    """Settings with the in-process Kafka consumer on, checked before any process starts."""
    from producers.kafka_producer import kafka_client_config
    from workers.kafka_runner import check_poll_budget

    try:
        check_poll_budget(s)
        kafka_client_config(s)
    except ValueError as exc:
        fail(str(exc))
    return s.model_copy(update={"kafka_in_worker": True})
