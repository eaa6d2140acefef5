"""What producers in the wild send: every compression codec a Kafka producer may use, null
keys, headers, tombstones, and batches the consumer cannot decode (which must never stall
their partition)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from schemas import names
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULTS = "SELECT count(*) FROM score_results"
HEADERS = [("trace", b"x")]


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 1, 1) as s:
        yield s


def send(stack: KafkaStack, values: list[bytes | None], topic: str = "", **config: object) -> None:
    producer = KafkaProducer(**stack.client, linger_ms=50, **config)
    try:
        futures = [
            # A null key (the producer picks the partition); a tombstone needs a key.
            producer.send(
                topic or stack.requests, value=v, key=None if v else b"gone", headers=HEADERS
            )
            for v in values
        ]
        producer.flush()
        assert all(not f.failed() for f in futures)
    finally:
        producer.close()


def encoded(prefix: str, n: int) -> list[bytes | None]:
    return [json.dumps(r).encode() for r in demo_requests(n, prefix=prefix)]


def test_every_codec_null_keys_headers_and_tombstones(stack: KafkaStack) -> None:
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        send(stack, encoded(codec, 200), compression_type=codec)
    send(stack, [None, None])  # tombstones
    stack.start("wild")
    wait_for(lambda: stack.scalar(RESULTS) >= 800, timeout=180, every=0.5)
    letters = read_topic(stack.client, stack.dlq, at_least=2)
    assert len(letters) == 2
    reasons = {dict(r.headers)[names.DLQ_HEADER_REASON].decode() for r in letters}
    assert reasons == {"a tombstone (the record's value is null): nothing to score"}
    assert stack.stop("wild") == 0
    assert stack.scalar(RESULTS) == 800
    assert sum(p.lag for p in consumer_lag(stack.settings().kafka)) == 0


NO_ZSTD = (
    "import sys, kafka.codec as codec; codec.has_zstd = lambda: False; "
    "sys.argv = ['scoring', 'stream']; from scoring.cli import main; main()"
)


def test_a_batch_the_consumer_cannot_decode_is_dead_lettered_and_the_partition_moves_on(
    stack: KafkaStack,
) -> None:
    """A consumer without zstd meets a zstd batch between two plain ones: each of its
    records becomes a dead letter (offset, partition, reason) and the rest are scored."""
    send(stack, encoded("before", 50))
    send(stack, encoded("zstd", 10), compression_type="zstd")
    send(stack, encoded("after", 50))
    stack.start("nozstd", "-c", NO_ZSTD, python=True)
    wait_for(lambda: stack.scalar(RESULTS) >= 100, timeout=180, every=0.5)
    letters = read_topic(stack.client, stack.dlq, at_least=10)
    offsets = sorted(int(dict(r.headers)[names.DLQ_HEADER_OFFSET]) for r in letters)
    assert offsets == list(range(50, 60))
    assert all("undecodable" in dict(r.headers)[names.DLQ_HEADER_REASON].decode() for r in letters)
    assert stack.stop("nozstd") == 0
    assert stack.scalar(RESULTS) == 100
    assert stack.scalar("SELECT count(*) FROM score_results WHERE request_id LIKE 'after-%'") == 50
    assert sum(p.lag for p in consumer_lag(stack.settings().kafka)) == 0


def test_a_feedback_batch_the_consumer_cannot_decode_is_dead_lettered_and_labels_go_on(
    stack: KafkaStack, make_topic: Any
) -> None:
    """The feedback thread of a consumer without zstd meets a zstd batch between two plain
    ones: its records become dead letters naming the feedback topic, the labels after it
    are stored, and the thread never fails and reconnects in a loop (it did)."""
    stack.feedback = make_topic("feedback", 1)
    send(stack, encoded("fb", 15))
    stack.start("nozstd", "-c", NO_ZSTD, python=True)
    wait_for(lambda: stack.scalar(RESULTS) >= 15, timeout=180, every=0.5)
    labels = [
        json.dumps({"request_id": f"fb-{i}", "label": "benign", "model": "demo"}).encode()
        for i in range(15)
    ]
    send(stack, labels[:5], topic=stack.feedback)
    send(stack, labels[5:10], topic=stack.feedback, compression_type="zstd")
    send(stack, labels[10:], topic=stack.feedback)
    wait_for(lambda: stack.scalar("SELECT count(*) FROM feedback") >= 10, timeout=120, every=0.5)
    letters = read_topic(stack.client, stack.dlq, at_least=5)
    assert sorted(int(dict(r.headers)[names.DLQ_HEADER_OFFSET]) for r in letters) == [5, 6, 7, 8, 9]
    for record in letters:
        headers = dict(record.headers)
        assert headers[names.DLQ_HEADER_TOPIC].decode() == stack.feedback
        assert "undecodable" in headers[names.DLQ_HEADER_REASON].decode()
    assert stack.stop("nozstd") == 0
    stored = stack.rows("SELECT request_id FROM feedback ORDER BY request_id")
    assert sorted(r[0] for r in stored) == sorted(
        [f"fb-{i}" for i in range(5)] + [f"fb-{i}" for i in range(10, 15)]
    )
    lags = consumer_lag(stack.settings().kafka, stack.feedback, f"{stack.group}-feedback")
    assert sum(p.lag for p in lags) == 0
    assert "feedback consumer failed" not in stack.log("nozstd")
