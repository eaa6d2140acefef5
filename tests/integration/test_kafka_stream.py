"""`scoring stream` against the real Kafka broker and real PostgreSQL: a consumer group that
loses nothing, doubles nothing, survives a SIGKILL, and dead-letters what it cannot use."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.kafka_producer import EventProducer
from schemas import names as c
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from tests.tcp_proxy import proxy_for
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULTS = "SELECT count(*) FROM score_results"


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 4, 4) as s:
        yield s


def produce(stack: KafkaStack, requests: list[dict]) -> None:
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send(requests) == len(requests)


def start_group(stack: KafkaStack, *names: str) -> None:
    """Start one `scoring stream` per name and wait until the group has split the partitions."""
    for name in names:
        stack.start(name)
    wait_for(lambda: all(len(stack.assigned(n)) == 4 // len(names) for n in names), timeout=120)


def stop_and_check_lag(stack: KafkaStack, *names: str) -> None:
    """SIGTERM finishes, commits and exits 0; the group then has nothing left to read."""
    for name in names:
        assert stack.stop(name) == 0, stack.log(name)[-3000:]
        assert "stream stopped" in stack.log(name)
    lags = consumer_lag(stack.settings().kafka)
    assert len(lags) == 4 and sum(p.lag for p in lags) == 0, lags


def test_two_consumers_in_a_group_score_every_event_once(stack: KafkaStack) -> None:
    start_group(stack, "stream-a", "stream-b")
    produce(stack, demo_requests(20_000, prefix="ev"))
    wait_for(lambda: stack.scalar(RESULTS) >= 20_000, timeout=240, every=1)
    rows, distinct, ok = stack.rows(
        "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status = 'ok') "
        "FROM score_results WHERE source = 'kafka'"
    )[0]
    assert (rows, distinct, ok) == (20_000, 20_000, 20_000)
    by_worker = dict(stack.rows("SELECT worker, count(*) FROM score_results GROUP BY worker"))
    host = socket.gethostname()
    assert set(by_worker) == {f"stream-a@{host}", f"stream-b@{host}"}, by_worker
    assert all(by_worker.values()), by_worker
    stop_and_check_lag(stack, "stream-a", "stream-b")
    events = read_topic(stack.client, stack.results, at_least=20_000)
    ids = Counter(json.loads(r.value)["request_id"] for r in events)
    assert len(ids) == 20_000 and set(ids) == {f"ev-{i}" for i in range(20_000)}
    assert {json.loads(events[0].value)["status"]} == {"ok"}


def test_a_consumer_killed_mid_stream_loses_and_doubles_nothing(stack: KafkaStack) -> None:
    start_group(stack, "stream-a", "stream-b")
    produce(stack, demo_requests(20_000, prefix="kill"))
    wait_for(lambda: stack.scalar(RESULTS) >= 2_000, timeout=240, every=0.2)
    stack.kill("stream-a")
    done_when_killed = stack.scalar(RESULTS)
    # After the session timeout the group moves stream-a's partitions to stream-b.
    wait_for(lambda: len(stack.assigned("stream-b")) == 4, timeout=120, every=0.5)
    wait_for(lambda: stack.scalar(RESULTS) >= 20_000, timeout=240, every=1)
    rows, distinct = stack.rows("SELECT count(*), count(DISTINCT request_id) FROM score_results")[0]
    assert (rows, distinct) == (20_000, 20_000)
    assert done_when_killed < 20_000  # it really died mid-stream
    assert stack.scalar("SELECT count(*) FROM score_results WHERE worker LIKE 'stream-b@%'") > 0
    stop_and_check_lag(stack, "stream-b")


def malformed() -> list[bytes]:
    """100 records that fail before a model sees them: each must become a dead letter."""
    kinds: list[bytes] = []
    for i in range(20):
        kinds.append(b"{not json " + str(i).encode())
        kinds.append(b"\xff\xfe" + str(i).encode())  # not UTF-8
        for body in (
            {"request_id": f"bad-{i}", "inputs": {}},  # no model
            {"request_id": f"bad id {i}", "model": "demo", "inputs": {}},  # bad request_id
            {"request_id": f"prio-{i}", "model": "demo", "inputs": {}, "priority": 42},
        ):
            kinds.append(json.dumps(body).encode())
    return kinds


def test_malformed_events_become_dead_letters_and_the_rest_are_scored(stack: KafkaStack) -> None:
    good = [json.dumps(r).encode() for r in demo_requests(5_000, prefix="good")]
    bad = malformed()
    mixed = list(good)
    for i, value in enumerate(bad):
        mixed.insert(i * 50 + 7, value)
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send_raw(mixed) == 5_100
    stack.start("stream-a")
    wait_for(lambda: stack.scalar(RESULTS) >= 5_000, timeout=240, every=1)
    letters = read_topic(stack.client, stack.dlq, at_least=100)
    assert len(letters) == 100
    assert sorted(r.value for r in letters) == sorted(bad)  # original bytes, intact
    reasons = [dict(r.headers)[c.DLQ_HEADER_REASON].decode() for r in letters]
    kinds = Counter(reason.split(":")[0] for reason in reasons)
    assert kinds == {
        "not JSON": 20,
        "not UTF-8": 20,
        "model": 20,
        "request_id": 20,
        "priority": 20,
    }, kinds
    said = {reason.split(":")[0]: reason for reason in reasons}
    assert "Field required" in said["model"]
    assert "pattern" in said["request_id"]
    assert "less than or equal to 9" in said["priority"]
    assert all(dict(r.headers)[c.DLQ_HEADER_TOPIC].decode() == stack.requests for r in letters)
    stop_and_check_lag(stack, "stream-a")
    assert stack.scalar(RESULTS) == 5_000
    assert stack.scalar("SELECT count(*) FROM score_results WHERE status = 'ok'") == 5_000


def test_a_database_outage_mid_stream_loses_and_doubles_nothing(stack: KafkaStack) -> None:
    """The worker reaches PostgreSQL through a proxy that is cut for 6 s mid-stream: batches
    it could not store are not committed, so after the outage they are read and scored
    again; every event ends with exactly one result row and nothing is dead-lettered."""
    with proxy_for(stack.database_url) as proxy:
        stack.start(
            "stream-db", extra_env={"SCORING_DATABASE_URL": proxy.url_for(stack.database_url)}
        )
        wait_for(lambda: len(stack.assigned("stream-db")) == 4, timeout=120)
        produce(stack, demo_requests(5_000, prefix="outage"))
        wait_for(lambda: stack.scalar(RESULTS) >= 500, timeout=120, every=0.05)
        proxy.cut()
        cut_at = stack.scalar(RESULTS)
        produce(stack, demo_requests(5_000, prefix="during"))

        time.sleep(6)
        assert stack.scalar(RESULTS) == cut_at  # nothing got through while it was down
        proxy.restore()
        wait_for(lambda: stack.scalar(RESULTS) >= 10_000, timeout=180, every=0.5)
        rows, distinct = stack.rows(
            "SELECT count(*), count(DISTINCT request_id) FROM score_results"
        )[0]
        assert (rows, distinct) == (10_000, 10_000)
        assert cut_at < 10_000
        log = stack.log("stream-db")
        assert "not stored, will be redelivered" in log and "rewound" in log, log[-3000:]
        assert "failed unexpectedly" not in log, log[-3000:]
        stop_and_check_lag(stack, "stream-db")
    assert read_topic(stack.client, stack.dlq, at_least=0, timeout=10) == []
