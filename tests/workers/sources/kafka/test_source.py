"""The stream worker's loop with a fake consumer and producer: what it commits, and when.

These test the commit rules (after results are confirmed, only finished prefixes, never
a record the database refused) without a broker; the real broker is in the integration
tests.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError
from kafka.structs import TopicPartition

from schemas import names as c
from schemas.settings import Settings
from workers.core.service import ScoringService
from workers.sources.base import Outcome, WorkItem
from workers.sources.kafka.runner import check_poll_budget
from workers.sources.kafka.source import (
    MAX_RETRY_WAIT_S,
    StreamTopics,
    StreamWorker,
    result_event,
)

TOPICS = StreamTopics("req", "res", "dlq")


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = 1_700_000_000_000


class FakeConsumer:
    """Partitions of records, a position per partition, and the commits it was given."""

    def __init__(self, partitions: dict[int, list[bytes]], max_records: int = 1000) -> None:
        self.logs = {
            TopicPartition("req", p): [
                Record("req", p, o, f"k{p}-{o}".encode(), v) for o, v in enumerate(values)
            ]
            for p, values in partitions.items()
        }
        self.position = {tp: 0 for tp in self.logs}
        self.max_records = max_records
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.fail_commits = 0

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        out, budget = {}, self.max_records
        for tp, log in self.logs.items():
            batch = log[self.position[tp] : self.position[tp] + budget]
            if batch:
                out[tp] = batch
                self.position[tp] += len(batch)
                budget -= len(batch)
        if not out:
            time.sleep(timeout_ms / 1000)  # like a real consumer: wait for records
        return out

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise CommitFailedError("group rebalanced")
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position[tp] = offset

    def committed(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged


@dataclass
class FakeFuture:
    exception: Exception | None = None

    def failed(self) -> bool:
        return self.exception is not None


@dataclass
class FakeProducer:
    fail_topic: str | None = None
    sent: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    flushes: int = 0

    def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        self.sent[topic].append({"key": key, "value": value, "headers": dict(headers or [])})
        return FakeFuture(KafkaTimeoutError("no ack") if topic == self.fail_topic else None)

    def flush(self) -> None:
        self.flushes += 1


class FakePipeline:
    """Decides each item's outcome by its payload; stored items get a result row."""

    def __init__(self, decide: Callable[[dict[str, Any]], str]) -> None:
        self.decide = decide
        self.calls = 0

    def process(self, items: list[WorkItem]) -> None:
        self.calls += 1
        for item in items:
            try:
                body = json.loads(item.payload)
            except ValueError:
                item.outcome, item.reason = Outcome.DEAD, "not JSON"
                continue
            item.outcome = Outcome(self.decide(body))
            if item.outcome is Outcome.STORED:
                item.result = {
                    "request_id": body["request_id"],
                    "model_name": "demo",
                    "model_version": 1,
                    "status": "ok",
                    "outputs": {"score": 0.9},
                    "error": None,
                    "scored_at": datetime(2026, 1, 1, tzinfo=UTC),
                    "worker": "w",
                }


def payloads(partition: int, n: int) -> list[bytes]:
    return [json.dumps({"request_id": f"p{partition}-{i}"}).encode() for i in range(n)]


@pytest.fixture
def make_worker():  # type: ignore[no-untyped-def]
    services: list[ScoringService] = []

    def factory(consumer: FakeConsumer, decide: Callable[[dict[str, Any]], str], **kw: Any):  # type: ignore[no-untyped-def]
        service = ScoringService(FakePipeline(decide), max_batch_size=64, max_wait_s=0.0).start()
        services.append(service)
        producer = kw.pop("producer", FakeProducer())
        kw.setdefault("depth", 1)  # finish each poll in the step that polled it
        kw.setdefault("poll_timeout_ms", 10)
        return StreamWorker(service, consumer, producer, TOPICS, **kw), producer

    yield factory
    for service in services:
        service.close()


def test_every_stored_record_is_committed_after_its_result_event(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 30), 1: payloads(1, 20)})
    worker, producer = make_worker(consumer, lambda body: "stored")
    assert worker.step() == 50
    assert consumer.committed() == {TopicPartition("req", 0): 30, TopicPartition("req", 1): 20}
    events = [json.loads(m["value"]) for m in producer.sent["res"]]
    assert len(events) == 50 and len({e["request_id"] for e in events}) == 50
    assert producer.flushes == 1 and worker.stats.results_published == 50
    assert worker.step() == 0 and len(consumer.commits) == 1  # nothing new: no new commit


def test_a_database_outage_commits_nothing_and_the_records_come_back(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 10)})
    down = {"yes": True}
    worker, producer = make_worker(consumer, lambda body: "retry" if down["yes"] else "stored")
    worker.step()
    assert consumer.commits == [] and consumer.seeks == [(TopicPartition("req", 0), 0)]
    assert producer.sent["res"] == [] and worker.stats.retried == 10
    down["yes"] = False
    assert worker.step() == 10  # read again from offset 0
    assert consumer.committed() == {TopicPartition("req", 0): 10}
    assert worker.stats.stored == 10 and worker.stats.rewinds == 1


def test_the_retry_wait_doubles_up_to_5_s_and_resets_once_stored(make_worker) -> None:  # type: ignore[no-untyped-def]
    """A long outage must not leave the consumer asleep for long after the database is back
    (the wait used to double to 30 s)."""
    consumer = FakeConsumer({0: payloads(0, 10)})
    down = {"yes": True}
    worker, _ = make_worker(consumer, lambda body: "retry" if down["yes"] else "stored")
    waits = []
    for _ in range(8):
        worker.step()
        waits.append(worker.retry_wait_s())
    assert waits == [0.5, 1.0, 2.0, 4.0, MAX_RETRY_WAIT_S, 5.0, 5.0, 5.0]
    down["yes"] = False
    worker.step()
    assert worker.stats.stored == 10 and worker.retry_wait_s() == 0.5


def test_a_retry_mid_partition_commits_the_prefix_and_rereads_the_rest(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 10), 1: payloads(1, 5)})
    tried: set[str] = set()

    def decide(body: dict[str, Any]) -> str:
        rid = body["request_id"]
        if rid == "p0-6" and rid not in tried:
            tried.add(rid)
            return "retry"
        return "stored"

    worker, producer = make_worker(consumer, decide)
    worker.step()
    p0, p1 = TopicPartition("req", 0), TopicPartition("req", 1)
    assert consumer.committed() == {p0: 6, p1: 5}
    assert consumer.seeks == [(p0, 6)]
    assert worker.step() == 4  # offsets 6..9 of partition 0, again
    assert consumer.committed() == {p0: 10, p1: 5}
    ids = [json.loads(m["value"])["request_id"] for m in producer.sent["res"]]
    assert len(set(ids)) == 15 and ids.count("p0-7") == 2  # at least once on the result topic


def test_dead_letters_keep_the_original_bytes_and_say_why(make_worker) -> None:  # type: ignore[no-untyped-def]
    values = payloads(0, 3)
    values.insert(1, b"\x00not json")
    consumer = FakeConsumer({0: values})
    worker, producer = make_worker(consumer, lambda body: "stored")
    worker.step()
    (dead,) = producer.sent["dlq"]
    assert dead["value"] == b"\x00not json" and dead["key"] == b"k0-1"
    assert dead["headers"][c.DLQ_HEADER_REASON] == b"not JSON"
    assert dead["headers"][c.DLQ_HEADER_OFFSET] == b"1"
    assert consumer.committed() == {TopicPartition("req", 0): 4}
    assert (worker.stats.stored, worker.stats.dead) == (3, 1)


def test_an_unconfirmed_dead_letter_is_not_committed(make_worker) -> None:  # type: ignore[no-untyped-def]
    values = payloads(0, 4)
    values[2] = b"garbage"
    consumer = FakeConsumer({0: values})
    failing = FakeProducer(fail_topic="dlq")
    worker, _ = make_worker(consumer, lambda body: "stored", producer=failing)
    worker.step()
    assert consumer.committed() == {TopicPartition("req", 0): 2}
    assert consumer.seeks == [(TopicPartition("req", 0), 2)]


def test_an_unconfirmed_result_event_is_not_committed(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 4)})
    failing = FakeProducer(fail_topic="res")
    worker, _ = make_worker(consumer, lambda body: "stored", producer=failing)
    worker.step()
    assert consumer.commits == [] and worker.stats.results_published == 0


def test_a_failed_commit_is_retried_on_the_next_step(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 5)})
    consumer.fail_commits = 1
    worker, _ = make_worker(consumer, lambda body: "stored")
    worker.step()
    assert consumer.commits == []
    assert worker.step() == 0  # an empty poll still commits what is finished
    assert consumer.committed() == {TopicPartition("req", 0): 5}


def test_with_two_polls_in_flight_commits_follow_the_records_in_order(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 25)}, max_records=10)
    worker, producer = make_worker(consumer, lambda body: "stored", depth=2)
    p0 = TopicPartition("req", 0)
    polled = [worker.step() for _ in range(3)]
    assert polled == [10, 10, 5]
    for _ in range(200):  # idle polls finish what is still being scored
        if consumer.committed().get(p0) == 25:
            break
        worker.step()
    offsets = [commit[p0] for commit in consumer.commits]
    assert offsets == sorted(offsets) and offsets[-1] == 25
    assert set(offsets) <= {10, 20, 25}
    assert len(producer.sent["res"]) == 25


def test_stopping_finishes_and_commits_what_is_in_flight(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 8), 1: payloads(1, 4)})
    worker, _ = make_worker(consumer, lambda body: "stored", depth=2)
    worker.step()
    worker.drain()
    assert consumer.committed() == {TopicPartition("req", 0): 8, TopicPartition("req", 1): 4}


def test_a_rewind_while_the_next_poll_is_in_flight_loses_nothing(make_worker) -> None:  # type: ignore[no-untyped-def]
    consumer = FakeConsumer({0: payloads(0, 20)}, max_records=5)
    failed: set[str] = set()

    def decide(body: dict[str, Any]) -> str:
        if body["request_id"] == "p0-3" and not failed:
            failed.add("p0-3")
            return "retry"
        return "stored"

    worker, producer = make_worker(consumer, decide, depth=2)
    for _ in range(50):
        worker.step()
    assert consumer.committed() == {TopicPartition("req", 0): 20}
    assert consumer.seeks == [(TopicPartition("req", 0), 3)]
    ids = {json.loads(m["value"])["request_id"] for m in producer.sent["res"]}
    assert ids == {f"p0-{i}" for i in range(20)}


def test_a_poll_that_cannot_be_stored_within_the_poll_interval_is_refused() -> None:
    check_poll_budget(Settings())
    with pytest.raises(ValueError, match="SCORING_KAFKA_MAX_POLL_RECORDS"):
        check_poll_budget(
            Settings().replace(
                kafka={"max_poll_records": 100_000},
                batching={"max_batch_size": 1},
                database={"retries": 8},
            )
        )


def test_a_result_event_carries_what_the_result_topic_promises() -> None:
    row = {
        "request_id": "r-1",
        "model_name": "demo",
        "model_version": 2,
        "status": "invalid",
        "outputs": None,
        "error": "x: missing",
        "scored_at": datetime(2026, 1, 1, tzinfo=UTC),
        "worker": "cpu0",
    }
    event = json.loads(result_event(row))
    assert event == {
        "request_id": "r-1",
        "model": "demo",
        "model_version": 2,
        "status": "invalid",
        "outputs": None,
        "error": "x: missing",
        "scored_at": "2026-01-01T00:00:00+00:00",
        "worker": "cpu0",
    }
