"""Run the Kafka stream worker in a process: `scoring stream`, or a thread of `scoring worker`.

Connects the clients from Settings, checks the poll budget before serving, reconnects
with backoff when Kafka fails, and leaves the group cleanly on stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaError

from producers.kafka_producer import kafka_client_config, producer_config
from scoring import constants as c
from scoring.settings import Settings
from workers.kafka_source import MAX_BACKOFF_S, StreamStats, StreamTopics, StreamWorker
from workers.pipeline import WorkItem
from workers.service import ScoringService

log = logging.getLogger(__name__)


def consumer_config(settings: Settings, group: str | None = None) -> dict[str, Any]:
    """Options that make the group lose nothing: manual commits, start from the beginning."""
    session = settings.kafka_session_timeout_ms
    return {
        **kafka_client_config(settings),
        "group_id": group or settings.kafka_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.kafka_max_poll_records,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "session_timeout_ms": session,
        "heartbeat_interval_ms": min(3000, session // 3),
        "client_id": "scoring-stream",
    }


def check_poll_budget(settings: Settings) -> None:
    """Fail fast when one poll's records could take longer to store than the group allows.

    The worst case is every scorer batch of a poll waiting through all database retries;
    that must fit in half of max_poll_interval_ms, or a slow database causes a rebalance.
    """
    batches = -(-settings.kafka_max_poll_records // settings.max_batch_size)
    retry_s = sum(settings.db_retry_backoff_s * 2**i for i in range(settings.db_retries))
    worst_s = batches * (retry_s + 5.0)
    budget_s = settings.kafka_max_poll_interval_ms / 2000
    if worst_s > budget_s:
        raise ValueError(
            f"one poll of {settings.kafka_max_poll_records} records may take {worst_s:.0f}s to "
            f"store (database retries included), over half of max_poll_interval "
            f"({budget_s:.0f}s): lower SCORING_KAFKA_MAX_POLL_RECORDS or raise "
            "SCORING_KAFKA_MAX_POLL_INTERVAL_MS"
        )


def route_dead_letters(
    other: Callable[[WorkItem], None] | None = None,
) -> Callable[[WorkItem], None]:
    """The pipeline's dead-letter callback for a process that has a Kafka source.

    Kafka dead letters are published by the consumer that read them, which confirms them
    before committing; here they are only logged. Items of other sources go to `other`.
    """

    def dead_letter(item: WorkItem) -> None:
        if item.source == c.SOURCE_KAFKA:
            log.warning("dead letter (kafka): %s", item.reason)
        elif other is not None:
            other(item)

    return dead_letter


def open_worker(
    settings: Settings, service: ScoringService, topics: StreamTopics | None = None
) -> StreamWorker:
    """Connect a consumer (in settings.kafka_group) and a producer, and subscribe."""
    from kafka import KafkaConsumer, KafkaProducer

    check_poll_budget(settings)
    consumer = KafkaConsumer(**consumer_config(settings))
    producer = KafkaProducer(**producer_config(settings))
    worker = StreamWorker(
        service,
        consumer,
        producer,
        topics or StreamTopics.from_settings(settings),
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        backoff_s=settings.db_retry_backoff_s,
    )
    worker.subscribe()
    return worker


def close_worker(worker: StreamWorker) -> None:
    """Finish and commit what is in flight, leave the group, close the clients."""
    worker.drain()
    worker.consumer.close(autocommit=False)
    worker.producer.close()


def run_stream(settings: Settings, service: ScoringService, stop: threading.Event) -> StreamStats:
    """Run a stream worker until `stop`; reconnects with backoff when Kafka fails."""
    total, failures = StreamStats(), 0
    while not stop.is_set():
        try:
            worker = open_worker(settings, service)
        except KafkaError as exc:
            failures += 1
            log.error("cannot reach Kafka at %s: %s", settings.kafka_bootstrap, exc)
            stop.wait(min(2.0**failures, MAX_BACKOFF_S))
            continue
        try:
            worker.run(stop)
            failures = 0
        except KafkaError as exc:
            failures += 1
            log.error("kafka consumer failed (%s); reconnecting", exc)
        finally:
            _close_quietly(worker)
            for name, value in vars(worker.stats).items():
                setattr(total, name, getattr(total, name) + value)
        if failures:
            stop.wait(min(2.0**failures, MAX_BACKOFF_S))
    return total


def _close_quietly(worker: StreamWorker) -> None:
    try:
        close_worker(worker)
    except KafkaError as exc:
        log.warning("closing the kafka clients failed: %s", exc)


class StreamThread:
    """The Kafka consumer as a thread of a Celery worker process, sharing its scorer."""

    def __init__(self, settings: Settings, service: Callable[[], ScoringService]) -> None:
        self.settings = settings
        self._service = service
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-stream", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish and commit the batch in hand, then leave the group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            stats = run_stream(self.settings, self._service(), self._stop)
            log.info("kafka stream stopped: %s", stats)
        except Exception:  # noqa: BLE001 - a dead consumer thread must at least say why
            log.exception("kafka stream thread failed")
