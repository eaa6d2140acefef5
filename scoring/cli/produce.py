"""`scoring produce`: JSON-lines requests to the Kafka topic or the Redis queue."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer

from schemas import names
from scoring.cli.common import console, err_console, fail, settings, use_settings
from scoring.cli.stream import quiet_kafka

if TYPE_CHECKING:
    from schemas.settings import Settings
    from schemas.wire import ScoreRequest


def produce(
    kafka: bool = typer.Option(False, "--kafka", help="Publish to the Kafka requests topic."),
    redis: bool = typer.Option(False, "--redis", help="Send to the Redis/Celery queue."),
    file: Path = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False, help="JSON lines (default: stdin)."
    ),
    topic: str = typer.Option(None, "--topic", help="Kafka topic (default: setting)."),
) -> None:
    """Validate JSON-lines requests and publish them.

    Lines that are not valid requests are reported with their line numbers and not sent;
    the exit code is 1 when any line was rejected or not confirmed.
    """
    if kafka == redis:
        fail("give exactly one of --kafka or --redis")
    quiet_kafka(logging.CRITICAL)
    s = settings().replace(kafka={"topic": topic}) if topic else settings()
    use_settings(s)
    rejected: list[str] = []
    with file.open(encoding="utf-8") if file else _stdin() as source:
        requests = _valid_requests(source, rejected, s.limits.max_metadata_bytes)
        confirmed, error = _send_kafka(s, requests) if kafka else _send_redis(s, requests)
    for line in rejected[:50]:
        err_console.print(f"[red]rejected[/] {line}", highlight=False)
    if len(rejected) > 50:
        err_console.print(f"… and {len(rejected) - 50} more rejected lines")
    where = f"Kafka topic {s.kafka.topic}" if kafka else f"Redis queue {s.broker.requests_queue}"
    console.print(f"{confirmed} requests confirmed on {where}; {len(rejected)} lines rejected")
    if error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
    if rejected or error:
        raise typer.Exit(names.EXIT_CHECK_FAILED)


def _stdin() -> TextIO:
    return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)  # noqa: SIM115


def _valid_requests(
    lines: Iterable[str], rejected: list[str], max_metadata_bytes: int
) -> Iterator[ScoreRequest]:
    """Requests from JSON lines; each bad line is added to `rejected` with its number."""
    from pydantic import ValidationError

    from producers.kafka_producer import validation_message
    from schemas.wire import ScoreRequest

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield ScoreRequest.parse(json.loads(line), max_metadata_bytes)
        except json.JSONDecodeError as exc:
            rejected.append(f"line {number}: not JSON: {exc}")
        except ValidationError as exc:
            rejected.append(f"line {number}: {validation_message(exc)}")


def _send_kafka(s: Settings, requests: Iterable[ScoreRequest]) -> tuple[int, str | None]:
    from kafka.errors import KafkaError

    from producers.kafka_producer import EventProducer, KafkaDeliveryError
    from schemas.kafka_access import KafkaAccessError, check_kafka

    try:
        check_kafka(s.kafka, client_id="scoring-produce")  # refused credentials, named
    except (KafkaAccessError, ValueError) as exc:
        fail(str(exc))
    try:
        producer = EventProducer(s.kafka).open()
    except (KafkaError, ValueError) as exc:
        fail(f"cannot reach Kafka at {s.kafka.bootstrap} (SCORING_KAFKA_BOOTSTRAP): {exc}")
    try:
        return producer.send(requests, validate=False), None
    except KafkaDeliveryError as exc:
        return exc.confirmed, str(exc)
    finally:
        producer.close()


def _send_redis(s: Settings, requests: Iterable[ScoreRequest]) -> tuple[int, str | None]:
    from kombu.exceptions import OperationalError

    from producers.redis_producer import RedisProducer
    from schemas.broker import celery_app

    try:
        return RedisProducer(celery_app(s.broker)).send(requests, validate=False), None
    except OperationalError as exc:
        fail(f"cannot reach the broker at {s.broker.display_url()} (SCORING_BROKER_URL): {exc}")
