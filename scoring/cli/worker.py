"""`scoring worker`: Celery worker process(es) on CPUs or pinned to GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from scoring.cli.common import fail, settings

if TYPE_CHECKING:
    from schemas.settings import Settings


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
) -> None:
    """Score requests from Redis (and Kafka with --kafka) in micro-batches."""
    from workers.launcher import LaunchError, plan_workers, run_many, with_metrics_ports

    s = settings()
    if kafka or s.kafka.in_worker:
        _check_kafka(s)
    try:
        plans = with_metrics_ports(plan_workers(cpu, gpus), s.runtime.metrics_port)
    except LaunchError as exc:
        fail(str(exc))
    env = {"SCORING_KAFKA_IN_WORKER": "true"} if kafka else {}
    plans = [{**plan, **env} for plan in plans]
    argv = [f"--queues={queues or s.broker.requests_queue}", f"--loglevel={loglevel}"]
    raise typer.Exit(run_many(plans, argv))


def _check_kafka(s: Settings) -> None:
    """The Kafka settings work, checked before any process starts."""
    from workers.sources.kafka.runner import check_poll_budget

    try:
        check_poll_budget(s)
        s.kafka.client_config()
    except ValueError as exc:
        fail(str(exc))
