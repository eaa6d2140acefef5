"""`scoring stream`: the Kafka consumer worker. `scoring produce`: JSON lines to Kafka/Redis."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import typer
from pydantic import ValidationError
from rich.table import Table

from producers.kafka_producer import kafka_client_config, validation_message
from schemas.wire import ScoreRequest
from scoring import constants as c
from scoring.cli.common import console, err_console, fail, settings
from scoring.settings import Settings

log = logging.getLogger(__name__)


def _quiet_kafka() -> None:
    """kafka-python logs every connection at INFO; keep its warnings and errors only."""
    logging.getLogger("kafka").setLevel(logging.WARNING)


def stream(
    topic: str = typer.Option(None, "--topic", help="Requests topic (default: setting)."),
    group: str = typer.Option(None, "--group", help="Consumer group (default: setting)."),
) -> None:
    """Score requests from Kafka as one consumer of a group; SIGTERM finishes and commits."""
    _quiet_kafka()
    s = _with_overrides(settings(), topic=topic, group=group)
    from workers.kafka_runner import check_poll_budget, route_dead_letters, run_stream

    try:
        check_poll_budget(s)
        kafka_client_config(s)
    except ValueError as exc:
        fail(str(exc))
    from workers.context import build_context

    context = build_context(s, route_dead_letters())
    for line in context.warm_up():
        log.info("warmed up %s", line)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("consuming %s as group %s at %s", s.kafka_topic, s.kafka_group, s.kafka_bootstrap)
    try:
        stats = run_stream(s, context.service, stop)
    finally:
        context.close()
    log.info("stream stopped: %s", stats)


def produce(
    kafka: bool = typer.Option(False, "--kafka", help="Publish to the Kafka requests topic."),
    redis: bool = typer.Option(False, "--redis", help="Send to the Redis/Celery queue."),
    file: Path = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False, help="JSON lines (default: stdin)."
    ),
    topic: str = typer.Option(None, "--topic", help="Kafka topic (default: setting)."),
) -> None:
    """Validate JSON-lines requests and publish them; says how many were confirmed.

    Lines that are not valid requests are reported with their line numbers and not sent;
    the exit code is 1 when any line was rejected or not confirmed.
    """
    if kafka == redis:
        fail("give exactly one of --kafka or --redis")
    _quiet_kafka()
    s = _with_overrides(settings(), topic=topic)
    rejected: list[str] = []
    with file.open(encoding="utf-8") if file else _stdin() as source:
        requests = _valid_requests(source, rejected)
        confirmed, error = _send_kafka(s, requests) if kafka else _send_redis(s, requests)
    for line in rejected[:50]:
        err_console.print(f"[red]rejected[/] {line}")
    if len(rejected) > 50:
        err_console.print(f"… and {len(rejected) - 50} more rejected lines")
    where = f"Kafka topic {s.kafka_topic}" if kafka else f"Redis queue {s.requests_queue}"
    console.print(f"{confirmed} requests confirmed on {where}; {len(rejected)} lines rejected")
    if error:
        err_console.print(f"[bold red]error:[/] {error}")
    if rejected or error:
        raise typer.Exit(c.EXIT_CHECK_FAILED)


def _stdin() -> TextIO:
    return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)  # noqa: SIM115


def _valid_requests(lines: Iterable[str], rejected: list[str]) -> Iterator[ScoreRequest]:
    """Requests from JSON lines; each bad line is added to `rejected` with its number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield ScoreRequest.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            rejected.append(f"line {number}: not JSON: {exc}")
        except ValidationError as exc:
            rejected.append(f"line {number}: {validation_message(exc)}")


def _send_kafka(s: Settings, requests: Iterable[ScoreRequest]) -> tuple[int, str | None]:
    from kafka.errors import KafkaError

    from producers.kafka_producer import EventProducer, KafkaDeliveryError

    try:
        producer = EventProducer(s).open()
    except (KafkaError, ValueError) as exc:
        return 0, f"cannot reach Kafka at {s.kafka_bootstrap}: {exc}"
    try:
        return producer.send(requests, validate=False), None
    except KafkaDeliveryError as exc:
        return exc.confirmed, str(exc)
    finally:
        producer.close()


def _send_redis(s: Settings, requests: Iterable[ScoreRequest]) -> tuple[int, str | None]:
    from kombu.exceptions import OperationalError

    from producers.redis_producer import RedisProducer
    from workers.celery_app import create_app

    try:
        return RedisProducer(create_app(s)).send(requests, validate=False), None
    except OperationalError as exc:
        return 0, f"cannot reach Redis at {s.broker_url}: {exc}"


def _with_overrides(s: Settings, **values: Any) -> Settings:
    names = {"topic": "kafka_topic", "group": "kafka_group"}
    update = {names[k]: v for k, v in values.items() if v}
    return s.model_copy(update=update) if update else s


def show_kafka_lag(wanted: bool | None) -> None:
    """`scoring status`'s Kafka table: lag per partition of the requests topic.

    With `wanted` None the table is shown only when the broker accepts a connection at
    once; with True an unreachable broker is an error.
    """
    s = settings()
    if wanted is False or (wanted is None and not _broker_answers(s.kafka_bootstrap)):
        return
    from kafka.errors import KafkaError

    from workers.kafka_lag import consumer_lag

    _quiet_kafka()
    try:
        lags = consumer_lag(s, timeout_s=5.0)
    except (KafkaError, ValueError) as exc:
        if wanted:
            fail(f"cannot read Kafka offsets at {s.kafka_bootstrap}: {exc}")
        return
    table = Table("partition", "end offset", "committed", "lag")
    table.title = f"kafka {s.kafka_topic}, group {s.kafka_group}"
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
