"""The feedback topic: ground truth that arrives later, stored beside the results.

Every Kafka consumer of scoring (`scoring stream`, `scoring worker --kafka`) runs one of
these threads in its own group (`<group>-feedback`), so each label is stored once per
group whatever the number of consumers. Offsets are committed only after the poll's
labels are in the database (an upsert: a redelivered poll changes nothing); a record
that is not feedback goes to the dead-letter topic with the reason, and so does one that
cannot be decoded at all (workers/sources/kafka/undecodable.py), so that it never stalls
its partition.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from schemas.settings import Settings
from workers.core.feedback import check_record, store_feedback
from workers.sources.kafka.source import MAX_BACKOFF_S, dead_letter_headers
from workers.sources.kafka.undecodable import DECODE_ERRORS, probe_factory, skip_undecodable

log = logging.getLogger(__name__)


@dataclass
class FeedbackStats:
    stored: int = 0
    rejected: int = 0


class FeedbackThread:
    """Consume the feedback topic until stopped; reconnect with backoff on failures."""

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = FeedbackStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def group(self) -> str:
        return f"{self.settings.kafka.group}-feedback"

    def start(self) -> FeedbackThread:
        if self.settings.kafka.feedback_topic:
            self._thread = threading.Thread(target=self._run, name="kafka-feedback", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.engine.dispose()  # its own pool, made for this thread by run_stream

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._consume()
                failures = 0
            except (KafkaError, SQLAlchemyError, OSError) as exc:
                failures += 1
                log.error("feedback consumer failed (%s); retrying", exc)
                self._stop.wait(min(2.0**failures, MAX_BACKOFF_S))
            except Exception:  # noqa: BLE001 - never end the thread silently
                failures += 1
                log.exception("feedback consumer failed unexpectedly; retrying")
                self._stop.wait(min(2.0**failures, MAX_BACKOFF_S))

    def _consume(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        kafka = self.settings.kafka
        config = {**kafka.consumer_config(self.group), "client_id": "scoring-feedback"}
        consumer = KafkaConsumer(kafka.feedback_topic, **config)
        try:
            producer = KafkaProducer(**kafka.producer_config("scoring-feedback"))
        except BaseException:
            consumer.close(autocommit=False)
            raise
        try:
            while not self._stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=1000)
                except DECODE_ERRORS as exc:
                    self._skip_undecodable(consumer, producer, exc)
                    continue
                records = [r for part in polled.values() for r in part]
                if records:
                    self._store(records, producer)
                    consumer.commit()
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=5)

    def _skip_undecodable(self, consumer: Any, producer: Any, exc: Exception) -> None:
        """Park the record the poll could not decode and commit the offset past it (the
        failed poll returned nothing, so no other partition's position moved)."""
        kafka = self.settings.kafka
        probe = probe_factory(kafka, "scoring-feedback-probe")
        skipped = skip_undecodable(consumer, producer, kafka.dlq_topic, probe)
        if skipped is None:  # not reproduced: transient, poll again
            log.warning("a feedback poll failed to decode (%s); no partition reproduces it", exc)
            return
        consumer.commit()
        self.stats.rejected += 1

    def _store(self, records: list[Any], producer: Any) -> None:
        """Store the poll's labels, then park every record that is not one (or whose
        request no single model scored) on the dead-letter topic, confirmed: a letter
        the broker did not take raises, so that the poll is not committed."""
        rows, kept, bad = [], [], []
        for record in records:
            try:
                value = json.loads(record.value)
            except (TypeError, ValueError, RecursionError):  # RecursionError: too deep
                bad.append((record, "feedback: not JSON"))
                continue
            row, reason = check_record(value)
            if row is None:
                bad.append((record, f"feedback: {reason}"))
            else:
                rows.append(row)
                kept.append(record)
        if rows:
            counts = store_feedback(self.engine, rows)
            self.stats.stored += counts.stored
            bad += [(kept[index], f"feedback: {reason}") for index, reason in counts.unowned]
        sent = []
        for record, reason in bad:
            log.warning("dead letter (kafka feedback): %s", reason)
            future = producer.send(
                self.settings.kafka.dlq_topic,
                key=record.key,
                value=record.value,
                headers=dead_letter_headers(record, reason),
            )
            sent.append(future)
        if sent:
            producer.flush(timeout=30)
            for future in sent:
                if not future.is_done or future.failed():
                    raise KafkaError(f"dead letter not confirmed: {future.exception}")
            self.stats.rejected += len(sent)
