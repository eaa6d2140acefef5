"""Run the Kafka source in a process: `scoring stream`, or a thread of `scoring worker`.

Connects the clients from the settings, checks the poll budget before serving, reconnects
with backoff when Kafka fails, and leaves the group cleanly on stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka.errors import KafkaError

from schemas.settings import Settings
from workers.sources.base import Scorer
from workers.sources.kafka.feedback import FeedbackThread
from workers.sources.kafka.source import MAX_BACKOFF_S, StreamStats, StreamTopics, StreamWorker
from workers.sources.kafka.undecodable import probe_factory

log = logging.getLogger(__name__)


def check_poll_budget(settings: Settings) -> None:
    """Fail fast when one poll's records could take longer to store than the group allows.

    The worst case is every scorer batch of a poll waiting through all database retries;
    that must fit in half of max_poll_interval_ms, or a slow database causes a rebalance.
    """
    kafka, db = settings.kafka, settings.database
    batches = -(-kafka.max_poll_records // settings.batching.max_batch_size)
    retry_s = sum(db.retry_backoff_s * 2**i for i in range(db.retries))
    worst_s = batches * (retry_s + 5.0)
    budget_s = kafka.max_poll_interval_ms / 2000
    if worst_s > budget_s:
        raise ValueError(
            f"one poll of {kafka.max_poll_records} records may take {worst_s:.0f}s to "
            f"store (database retries included), over half of max_poll_interval "
            f"({budget_s:.0f}s): lower SCORING_KAFKA_MAX_POLL_RECORDS or raise "
            "SCORING_KAFKA_MAX_POLL_INTERVAL_MS"
        )


def check_reachable(settings: Settings, timeout_s: float = 10.0) -> None:
    """Fetch the cluster's metadata once, so that `scoring stream` fails at start with the
    setting and what the broker did (schemas.kafka_access.KafkaAccessError) when the
    brokers are unreachable or refuse the credentials; once serving, a lost broker is
    retried with backoff instead."""
    from schemas.kafka_access import check_kafka

    check_kafka(settings.kafka, timeout_s)


def open_worker(
    settings: Settings, scorer: Scorer, topics: StreamTopics | None = None
) -> StreamWorker:
    """Connect a consumer (in the settings' group) and a producer, and subscribe."""
    from kafka import KafkaConsumer, KafkaProducer

    check_poll_budget(settings)
    kafka = settings.kafka
    consumer = KafkaConsumer(**kafka.consumer_config())
    producer = KafkaProducer(**kafka.producer_config())
    worker = StreamWorker(
        scorer,
        consumer,
        producer,
        topics or StreamTopics.from_settings(kafka),
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        backoff_s=settings.database.retry_backoff_s,
        probe_factory=probe_factory(kafka, "scoring-probe"),
    )
    worker.subscribe()
    return worker


def run_stream(
    settings: Settings,
    scorer: Scorer,
    stop: threading.Event,
    on_open: Callable[[StreamWorker], None] | None = None,
) -> StreamStats:
    """Run a stream worker until `stop`; reconnects with backoff when Kafka fails.
    `on_open` sees each new consumer (the process routes Kafka dead letters to it)."""
    total = StreamStats()
    feedback = _feedback_thread(settings)
    try:
        _serve(settings, scorer, stop, on_open, total)
    finally:
        if feedback is not None:
            feedback.stop()
    return total


def _feedback_thread(settings: Settings) -> FeedbackThread | None:
    """The feedback topic's consumer beside the requests' (none when the topic is unset)."""
    if not settings.kafka.feedback_topic:
        return None
    from schemas.db import make_engine

    return FeedbackThread(settings, make_engine(settings.database.sqlalchemy_url())).start()


def _serve(
    settings: Settings,
    scorer: Scorer,
    stop: threading.Event,
    on_open: Callable[[StreamWorker], None] | None,
    total: StreamStats,
) -> None:
    failures = 0
    while not stop.is_set():
        try:
            worker = open_worker(settings, scorer)
        except KafkaError as exc:
            failures += 1
            log.error("cannot reach Kafka at %s: %s", settings.kafka.bootstrap, exc)
            stop.wait(min(2.0**failures, MAX_BACKOFF_S))
            continue
        if on_open is not None:
            on_open(worker)
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


def _close_quietly(worker: StreamWorker) -> None:
    try:
        worker.close()
    except KafkaError as exc:
        log.warning("closing the kafka clients failed: %s", exc)


class StreamThread:
    """The Kafka source as a thread of a Celery worker process, sharing its scorer."""

    def __init__(
        self,
        settings: Settings,
        scorer: Callable[[], Scorer],
        on_open: Callable[[StreamWorker], None] | None = None,
    ) -> None:
        self.settings = settings
        self._scorer = scorer
        self._on_open = on_open
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
            stats = run_stream(self.settings, self._scorer(), self._stop, self._on_open)
            log.info("kafka stream stopped: %s", stats)
        except Exception:  # noqa: BLE001 - a dead consumer thread must at least say why
            log.exception("kafka stream thread failed")
