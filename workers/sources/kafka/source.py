"""The Kafka source: a consumer-group worker that commits offsets only after results are stored.

Each step polls a batch, hands it to the process's ScoringService (the same micro-batcher
and model copy the Celery task uses), publishes a result event per stored request and a
dead letter per unusable record, waits until the broker confirms those, and only then
commits offset + 1 for each partition's prefix of finished records. Records the database
refused are not committed: their partitions are rewound and retried after a backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas import names as c
from schemas.settings import KafkaSettings
from workers.sources.base import Outcome, Scorer, Ticket, WorkItem, settled_ok
from workers.sources.kafka.offsets import OffsetBook
from workers.sources.kafka.undecodable import DECODE_ERRORS, skip_undecodable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# The longest wait before polling records again that were not stored (the database was
# down): each try already waits through the sink's own retries, and a longer wait only
# delays the recovery once the database is back.
MAX_RETRY_WAIT_S = 5.0
# Poll timeout while a batch is being scored: short, so a finished batch is published soon.
POLL_WHILE_SCORING_MS = 5


@dataclass
class StreamStats:
    """Counts since start: what a test or an operator checks against what was produced."""

    polled: int = 0
    stored: int = 0
    dead: int = 0
    retried: int = 0
    results_published: int = 0
    commits: int = 0
    rewinds: int = 0


@dataclass(frozen=True)
class StreamTopics:
    requests: str
    results: str
    dead_letters: str

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> StreamTopics:
        return cls(kafka.topic, kafka.results_topic, kafka.dlq_topic)


def result_event(row: dict[str, Any]) -> bytes:
    """The result topic's message for one stored request (JSON, UTF-8)."""
    return json.dumps(
        {
            "request_id": row["request_id"],
            "model": row["model_name"],
            "model_version": row["model_version"],
            "status": row["status"],
            "outputs": row["outputs"],
            "error": row["error"],
            "scored_at": row["scored_at"].isoformat(),
            "worker": row["worker"],
        },
        separators=(",", ":"),
    ).encode("utf-8")


def dead_letter_headers(record: Any, reason: str | None) -> list[tuple[str, bytes]]:
    return [
        (c.DLQ_HEADER_REASON, (reason or "unknown").encode("utf-8")),
        (c.DLQ_HEADER_TOPIC, record.topic.encode()),
        (c.DLQ_HEADER_PARTITION, str(record.partition).encode()),
        (c.DLQ_HEADER_OFFSET, str(record.offset).encode()),
    ]


@dataclass
class _Batch:
    """One poll's records on their way through the scorer (each item's token is its record)."""

    items: list[WorkItem]
    ticket: Ticket
    started: float


class StreamWorker:
    """The Kafka source: one consumer in the group, feeding the process's scorer. Not
    thread-safe: one loop (and kafka-python's rebalance callbacks, which run inside it).

    `consumer` and `producer` are kafka-python clients (or test doubles with the same
    methods); the worker makes no connection of its own.
    """

    name = c.SOURCE_KAFKA

    def __init__(
        self,
        service: Scorer,
        consumer: Any,
        producer: Any,
        topics: StreamTopics,
        *,
        poll_timeout_ms: int = 200,
        max_poll_interval_ms: int = 300_000,
        backoff_s: float = 0.5,
        depth: int = 2,
        probe_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.service = service
        self.consumer = consumer
        self.producer = producer
        self.topics = topics
        self.poll_timeout_ms = poll_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.backoff_s = backoff_s
        self.depth = depth  # polls in flight: 2 lets the next poll score while one publishes
        self.probe_factory = probe_factory  # a group-less consumer, to find undecodable records
        self.book = OffsetBook()
        self.stats = StreamStats()
        self._in_flight: deque[_Batch] = deque()
        self._failures = 0

    def subscribe(self) -> None:
        """Join the group once the topic's partitions are known: a first assignment made
        without them is followed at once by a second rebalance, which kafka-python 3 was
        seen to leave unfinished (the member never got its partitions). The coordinator
        records the partitions only from a metadata update that arrives after the
        subscription, so one is fetched right after it (`topics()` always asks)."""
        known = getattr(self.consumer, "partitions_for_topic", None)
        if known is not None:
            known(self.topics.requests)
        self.consumer.subscribe([self.topics.requests], listener=_Rebalance(self))
        refresh = getattr(self.consumer, "topics", None)
        if refresh is not None:
            refresh()

    def run(self, stop: threading.Event) -> StreamStats:
        """Poll and score until `stop` is set; batches in hand are finished and committed."""
        while not stop.is_set():
            self.step()
            if self._failures:
                stop.wait(self.retry_wait_s())
        self.drain()
        return self.stats

    def retry_wait_s(self) -> float:
        """Seconds to wait after a step that stored nothing: doubling, up to a cap."""
        return min(self.backoff_s * 2 ** max(self._failures - 1, 0), MAX_RETRY_WAIT_S)

    def step(self) -> int:
        """Poll and submit a batch, then finish (publish, commit) batches that are done.

        The scorer works on one poll while the previous one's results are published and
        committed; the oldest batch is waited for only when `depth` polls are in flight.
        While one is, polls are short, so that new records reach the scorer and finished
        batches are published without waiting for each other. Returns records polled.
        """
        timeout = POLL_WHILE_SCORING_MS if self._in_flight else self.poll_timeout_ms
        try:
            polled = self.consumer.poll(timeout_ms=timeout)
        except DECODE_ERRORS as exc:
            self._skip_undecodable(exc)
            polled = {}
        records = [r for batch in polled.values() for r in batch]
        if records:
            for record in records:
                self.book.received(_tp(record), record.offset)
            items = [work_item(record) for record in records]
            ticket = self.service.submit(items)
            self._in_flight.append(_Batch(items, ticket, time.monotonic()))
        while self._in_flight and (
            len(self._in_flight) >= self.depth or self._in_flight[0].ticket.wait(0)
        ):
            self._finish(self._in_flight.popleft())
        self.commit()  # also retries a commit that failed earlier
        return len(records)

    def _skip_undecodable(self, exc: Exception) -> None:
        """Dead-letter the record kafka-python could not decode and move past it; without
        a probe (test doubles) the error is raised."""
        if self.probe_factory is None:
            raise exc
        skipped = skip_undecodable(
            self.consumer, self.producer, self.topics.dead_letters, self.probe_factory
        )
        if skipped is None:
            log.warning("a poll failed to decode (%s) but no partition reproduces it", exc)
            self._failures += 1
            return
        tp, offset = skipped
        self.book.received(tp, offset)
        self.book.finished(tp, offset, ok=True)
        self.stats.dead += 1

    def drain(self) -> None:
        """Finish every batch in flight and commit them (on stop)."""
        self.finish_in_flight()
        self.commit()

    def finish_in_flight(self) -> None:
        """Wait for, publish and book every batch in flight (without committing)."""
        while self._in_flight:
            self._finish(self._in_flight.popleft())

    def _finish(self, batch: _Batch) -> None:
        batch.ticket.wait()
        self.settle(batch.items)
        self._warn_if_slow(len(batch.items), time.monotonic() - batch.started)

    def settle(self, items: Sequence[WorkItem]) -> None:
        """Publish result events and dead letters (confirmed), book each record as
        finished or to retry, and rewind the partitions that have records to retry."""
        self._publish(items)
        for item in items:
            record = item.token
            self.book.finished(_tp(record), record.offset, ok=settled_ok(item))
        self._rewind()
        self._count(items)

    def dead_letter(self, item: WorkItem) -> None:
        """Only logged here: `settle` publishes it with the original record's bytes and
        confirms it before the offset is committed."""
        log.warning("dead letter (kafka): %s", item.reason)

    def close(self) -> None:
        """Finish and commit what is in flight, leave the group, close the clients."""
        self.drain()
        self.consumer.close(autocommit=False)
        self.producer.close()

    def commit(self, partitions: Any = None) -> None:
        """Commit what is finished; a failed commit is logged and tried again later."""
        offsets = self.book.to_commit(partitions)
        if not offsets:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except KafkaError as exc:
            log.warning("offset commit failed (%s); records after them may be redelivered", exc)
            return
        self.book.committed(offsets)
        self.stats.commits += 1

    def _publish(self, items: Sequence[WorkItem]) -> None:
        """Result events and dead letters, confirmed; an unconfirmed one is not finished."""
        sent: list[tuple[WorkItem, Any]] = []
        for item in items:
            record = item.token
            if item.outcome is Outcome.STORED and item.result is not None:
                value = result_event(item.result)
                key = item.result["request_id"].encode()
                sent.append((item, self.producer.send(self.topics.results, key=key, value=value)))
            elif item.outcome is Outcome.DEAD:
                headers = dead_letter_headers(record, item.reason)
                future = self.producer.send(
                    self.topics.dead_letters, key=record.key, value=record.value, headers=headers
                )
                sent.append((item, future))
        if not sent:
            return
        self.producer.flush()
        for item, future in sent:
            if future.failed():
                log.error("not confirmed by Kafka, will retry: %s", future.exception)
                item.outcome, item.reason = Outcome.RETRY, f"publish failed: {future.exception}"
            elif item.outcome is Outcome.STORED:
                self.stats.results_published += 1

    def _rewind(self) -> None:
        seeks = self.book.rewind()
        for tp, offset in seeks.items():
            self.consumer.seek(tp, offset)
        if seeks:
            self._failures += 1
            self.stats.rewinds += 1
            log.warning("rewound %d partition(s) to retry unstored records", len(seeks))
        else:
            self._failures = 0

    def _count(self, items: Sequence[WorkItem]) -> None:
        self.stats.polled += len(items)
        for item in items:
            if item.outcome is Outcome.STORED:
                self.stats.stored += 1
            elif item.outcome is Outcome.DEAD:
                self.stats.dead += 1
            else:
                self.stats.retried += 1

    def _warn_if_slow(self, n: int, seconds: float) -> None:
        if seconds * 1000 > self.max_poll_interval_ms / 2:
            log.warning(
                "%d records took %.1fs, over half of max_poll_interval_ms: lower "
                "SCORING_KAFKA_MAX_POLL_RECORDS before the group starts rebalancing",
                n,
                seconds,
            )


class _Rebalance(AsyncConsumerRebalanceListener):
    """Commits what is finished before partitions move, and forgets them afterwards.

    Runs on kafka-python's IO thread while the worker's own thread waits inside poll(),
    so nothing else touches the worker meanwhile. Blocking calls into the consumer are
    refused there, so the commit is awaited; waiting for the batch in flight (one poll,
    well inside max_poll_interval_ms) only delays this member's JoinGroup.
    """

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        worker = self.worker
        worker.finish_in_flight()  # their results are stored before the partitions move
        offsets = worker.book.to_commit(revoked)
        if offsets:
            commit = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            try:
                await worker.consumer.commit_async(commit)
                worker.book.committed(offsets)
            except KafkaError as exc:
                log.warning("commit on revocation failed (%s): the new owner redoes them", exc)
        worker.book.forget(revoked)
        if revoked:
            log.info("partitions revoked: %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", _names(assigned))

    async def on_partitions_lost(self, lost: Any) -> None:
        self.worker.book.forget(lost)
        log.warning("partitions lost (evicted from the group): %s", _names(lost))


def _tp(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def work_item(record: Any) -> WorkItem:
    """A polled Kafka record as the scorer sees it: raw bytes, stamped with the record time."""
    enqueued = (
        datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp >= 0 else None
    )
    return WorkItem(payload=record.value, source=c.SOURCE_KAFKA, enqueued_at=enqueued, token=record)


def _names(partitions: Any) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "none"
