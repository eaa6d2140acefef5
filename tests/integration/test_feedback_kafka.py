"""The feedback topic against the real Kafka broker and real PostgreSQL: a running consumer
(`scoring stream`, and `scoring worker --kafka`) stores each ground-truth label once,
finds the model of records that name none, dead-letters what is not feedback with the
reason, and gives the accuracy the labels sent imply; the same labels sent again change
nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.kafka_producer import EventProducer
from schemas import names as c
from schemas.monitoring import accuracy_by_version
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration]

N = 200
RIGHT = 150  # labels equal to the model's; the other N - RIGHT are the other label
OTHER = {"benign": "malignant", "malignant": "benign"}
FEEDBACK = "SELECT count(*) FROM feedback"


# `scoring worker --kafka` costs a launcher and its child's warm-up (~45 s here): slow.
@pytest.fixture(params=["stream", pytest.param("worker", marks=pytest.mark.slow)])
def stack(
    request: pytest.FixtureRequest,
    kafka_settings: KafkaSettings,
    pg_url: str,
    make_topic: Any,
    tmp_path: Path,
    demo_artifact: Path,
) -> Iterator[KafkaStack]:
    """A stack with a feedback topic of its own and one consumer running: `scoring
    stream`, or `scoring worker --kafka` (its Kafka thread, beside a Redis queue)."""
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 1) as s:
        s.feedback = make_topic("feedback", 2)
        if request.param == "stream":
            s.start("consumer")
        else:
            redis_url = request.getfixturevalue("redis_url")
            queue = f"fb-{s.group}"
            extra = {
                "SCORING_BROKER_URL": redis_url,
                "SCORING_REQUESTS_QUEUE": queue,
                "SCORING_DEAD_LETTER_QUEUE": f"{queue}.dlq",
            }
            s.start("consumer", "worker", "--cpu", "1", "--kafka", extra_env=extra)
        yield s


def publish(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    """Send raw records with a real producer and wait until the broker has them all."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka.producer_config("feedback-test"))
    try:
        futures = [producer.send(topic, value=v) for v in values]
        producer.flush(timeout=60)
        assert all(f.succeeded() for f in futures), [f.exception for f in futures if f.failed()]
    finally:
        producer.close(timeout=10)


def feedback_records(labels: dict[str, str]) -> tuple[list[bytes], int]:
    """Feedback for every scored request: the model's label for the first RIGHT, the
    other label for the rest; every other record names the model, the others leave it to
    be looked up. Returns the records and how many labels agree with the model."""
    records, agree = [], 0
    for i, (request_id, given) in enumerate(sorted(labels.items())):
        label = given if i < RIGHT else OTHER[given]
        agree += label == given
        body: dict[str, Any] = {"request_id": request_id, "label": label}
        if i % 2 == 0:
            body["model"] = "demo"
        records.append(json.dumps(body).encode())
    return records, agree


BAD = {
    b"{not json": "feedback: not JSON",
    json.dumps({"label": "benign", "model": "demo"}).encode(): "feedback: request_id must be",
    json.dumps({"request_id": "fb-0", "label": {"class": "benign"}}).encode(): (
        "feedback: fb-0: label must be a string"
    ),
    # Regressions: too deep to parse (this killed the thread), and a request that no
    # model scored, named by no model (this was dropped with a log line).
    b"[" * 100_000: "feedback: not JSON",
    json.dumps({"request_id": "never-scored", "label": "benign"}).encode(): (
        "feedback: never-scored: no result for this request_id"
    ),
}


def group_lag(stack: KafkaStack) -> int:
    lags = consumer_lag(stack.settings().kafka, stack.feedback, f"{stack.group}-feedback")
    return sum(p.lag for p in lags)


def test_feedback_topic_is_stored_once_and_gives_the_accuracy(stack: KafkaStack) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send(demo_requests(N, prefix="fb")) == N
    wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") >= N, timeout=240)
    labels = dict(
        stack.rows("SELECT request_id, outputs->>'label' FROM score_results WHERE status = 'ok'")
    )
    assert len(labels) == N and set(labels.values()) <= set(OTHER), labels

    good, agree = feedback_records(labels)
    assert agree == RIGHT
    mixed = list(good)
    for i, value in enumerate(BAD):
        mixed.insert(i * 40 + 3, value)
    publish(stack.kafka, stack.feedback, mixed)

    wait_for(lambda: stack.scalar(FEEDBACK) >= N and group_lag(stack) == 0, timeout=120)
    stored = {
        r[0]: (r[1], r[2]) for r in stack.rows("SELECT request_id, model_name, label FROM feedback")
    }
    sent = {json.loads(v)["request_id"]: json.loads(v)["label"] for v in good}
    assert stored == {rid: ("demo", label) for rid, label in sent.items()}
    expected = {"model": "demo", "version": 1, "labelled": N, "correct": agree}
    assert accuracy_by_version(stack.engine(), since) == [
        {**expected, "accuracy": round(agree / N, 6)}
    ]
    assert agree / N == 0.75

    letters = read_topic(stack.client, stack.dlq, at_least=len(BAD))
    assert sorted(r.value for r in letters) == sorted(BAD)
    for record in letters:
        headers = dict(record.headers)
        reason = headers[c.DLQ_HEADER_REASON].decode()
        assert reason.startswith(BAD[record.value]), reason
        assert headers[c.DLQ_HEADER_TOPIC].decode() == stack.feedback

    # The same labels again: every row is rewritten (received_at moves), none is added.
    before = stack.scalar("SELECT max(received_at) FROM feedback")
    publish(stack.kafka, stack.feedback, good)
    wait_for(
        lambda: (
            stack.scalar(f"SELECT count(*) FROM feedback WHERE received_at > '{before}'") == N
            and group_lag(stack) == 0
        ),
        timeout=120,
    )
    assert stack.scalar(FEEDBACK) == N
    assert accuracy_by_version(stack.engine(), since) == [
        {**expected, "accuracy": round(agree / N, 6)}
    ]
    assert len(read_topic(stack.client, stack.dlq, at_least=len(BAD))) == len(BAD)

    assert stack.stop("consumer") == 0, stack.log("consumer")[-3000:]
    log = stack.log("consumer")
    assert "feedback consumer failed" not in log, log[-3000:]
