"""`scoring status`: recent bulk runs, and Kafka consumer lag per partition."""

from __future__ import annotations

import logging
import socket

import typer
from rich.table import Table

from scoring.cli.common import console, engine, fail, settings


def status(
    kafka: bool = typer.Option(
        None, "--kafka/--no-kafka", help="Kafka consumer lag (default: if the broker answers)."
    ),
) -> None:
    """Recent bulk runs and their progress, and Kafka consumer lag per partition."""
    from sqlmodel import col, select

    from schemas.db import session_scope
    from schemas.tables import BulkRun

    db = engine()
    with session_scope(db) as session:
        runs = session.exec(
            select(BulkRun).order_by(col(BulkRun.started_at).desc()).limit(10)
        ).all()
    table = Table("run", "model", "status", "rows", "rejected", "started", title="bulk runs")
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
    show_kafka_lag(kafka)


def show_kafka_lag(wanted: bool | None) -> None:
    """The Kafka table: lag per partition of the requests topic. With `wanted` None it is
    shown only when the broker accepts a connection at once; with True an unreachable
    broker is an error."""
    kafka = settings().kafka
    if wanted is False or (wanted is None and not _broker_answers(kafka.bootstrap)):
        return
    from kafka.errors import KafkaError

    from scoring.cli.stream import quiet_kafka
    from workers.sources.kafka.lag import consumer_lag

    quiet_kafka(logging.CRITICAL)
    try:
        lags = consumer_lag(kafka, timeout_s=5.0)
    except (KafkaError, ValueError) as exc:
        if wanted:
            fail(f"cannot reach Kafka at {kafka.bootstrap} (SCORING_KAFKA_BOOTSTRAP): {exc}")
        return
    table = Table("partition", "end offset", "committed", "lag")
    table.title = f"kafka {kafka.topic}, group {kafka.group}"
    for p in lags:
        table.add_row(str(p.partition), str(p.end), str(p.committed or "-"), str(p.lag))
    table.add_row("total", "", "", str(sum(p.lag for p in lags)))
    console.print(table)


def _broker_answers(bootstrap: str, timeout_s: float = 0.3) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout_s).close()
    except (OSError, ValueError):
        return False
    return True
