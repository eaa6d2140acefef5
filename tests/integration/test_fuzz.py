"""Fuzzed messages on both paths: hypothesis builds wire messages as producers in the wild
send them (wrong types, missing and extra fields, NaN and infinity, huge and deeply
nested values, bytes that are not UTF-8 or not JSON, duplicate keys, unknown models and
versions, absurd priorities and deadlines), and they go through the real Kafka topic and
the real Redis queue to one running worker. Each ends as exactly one result row or one
dead letter; the worker never stops; a valid request sent after each burst is scored; and
the worker's memory (RSS of its process tree) grows by less than RSS_GROWTH_MB between
warm-up and the end, the >10 MB messages included."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from producers.kafka_producer import EventProducer
from schemas.broker import celery_app
from schemas.settings import BrokerSettings, KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = list(demo_requests(1)[0]["inputs"])
BURST = 25  # messages per path and burst
# Allowed RSS growth of the worker's processes from warm-up to the end of all bursts: six
# 11 MB Redis messages (decoded to text, then JSON, then dead-lettered) must not be kept.
RSS_GROWTH_MB = 150


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the launcher and its worker
    processes), from /proc (psutil is not a dependency)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        total += int(line.split()[1])  # kB
    return total / 1024


weird = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
bad_id = (
    st.none() | st.integers() | st.just("") | st.text(min_size=129, max_size=140) | st.just("a b")
)


@st.composite
def request_dict(draw: st.DrawFn, request_id: str) -> dict:
    """A request with some of its fields damaged (or none: some are valid)."""
    inputs = {f: draw(finite) for f in FEATURES}
    for name in draw(st.sets(st.sampled_from(FEATURES), max_size=2)):
        del inputs[name]
    inputs.update(draw(st.dictionaries(st.sampled_from([*FEATURES, "extra"]), weird, max_size=2)))
    message: dict = {"request_id": request_id, "model": "demo", "inputs": inputs}
    if draw(st.booleans()):
        message["request_id"] = draw(bad_id)
    if draw(st.integers(0, 4)) == 0:
        message["model"] = draw(st.none() | st.integers() | st.text(max_size=12))
    if draw(st.booleans()):
        message["model_version"] = draw(st.integers(-3, 10**12) | st.text(max_size=3) | st.none())
    if draw(st.booleans()):
        message["priority"] = draw(st.integers(-1000, 1000) | st.text(max_size=3))
    if draw(st.booleans()):
        message["deadline_ms"] = draw(st.integers(-(10**15), 10**15) | st.floats())
    if draw(st.booleans()):
        message["metadata"] = draw(weird)
    message.update(draw(st.dictionaries(st.text(max_size=6), weird, max_size=2)))
    if draw(st.integers(0, 5)) == 0:
        del message[draw(st.sampled_from(sorted(message)))]
    return message


@st.composite
def wire_text(draw: st.DrawFn, request_id: str) -> str:
    """What one producer sent, as text: JSON of a damaged request, JSON that is not an
    object, deep nesting, duplicate keys, or text that is no JSON at all."""
    kind = draw(st.sampled_from(["request"] * 6 + ["not object", "deep", "dupes", "text"]))
    if kind == "request":
        return json.dumps(draw(request_dict(request_id)))
    if kind == "not object":
        return json.dumps(draw(weird))
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return "[" * depth + "]" * depth
    if kind == "dupes":
        good = json.dumps(demo_requests(1)[0]["inputs"])
        head = f'"request_id": "x", "request_id": "{request_id}", "model": "demo"'
        return f'{{{head}, "inputs": {good}}}'
    return draw(st.text(max_size=200))


@st.composite
def kafka_value(draw: st.DrawFn, request_id: str) -> bytes:
    if draw(st.integers(0, 6)) == 0:
        return draw(st.binary(max_size=200)) + b"\xff\xfe"  # never UTF-8
    return draw(wire_text(request_id)).encode("utf-8", errors="surrogatepass")


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 1) as s:
        yield s


def dlq_records(stack: KafkaStack) -> int:
    consumer = KafkaConsumer(**stack.client)
    try:
        tps = [TopicPartition(stack.dlq, p) for p in consumer.partitions_for_topic(stack.dlq)]
        return int(sum(consumer.end_offsets(tps).values()))
    finally:
        consumer.close()


def test_fuzzed_messages_through_both_paths_end_as_rows_or_dead_letters(
    stack: KafkaStack, redis_url: str, tmp_path: Path
) -> None:
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    env = {
        **stack.env,
        "SCORING_BROKER_URL": redis_url,
        "SCORING_REQUESTS_QUEUE": queue,
        "SCORING_DEAD_LETTER_QUEUE": f"{queue}.dlq",
        "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1", "--kafka"],
        env=env,
        stdout=(tmp_path / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    stack.procs["worker"] = worker
    broker = BrokerSettings(url=redis_url, requests_queue=queue, dead_letter_queue=f"{queue}.dlq")
    celery = celery_app(broker)
    client = redis.Redis.from_url(redis_url)
    sent = {"kafka": 0, "redis": 0}
    bursts = [0]

    # Warm-up: one valid request on each path is scored before the baseline is taken.
    warm = demo_requests(1, prefix="warm")[0]
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send([{**warm, "request_id": "warm-k"}]) == 1
    celery.send_task("scoring.score", args=[[{**warm, "request_id": "warm-r"}]],
                     kwargs={"source": "redis"}, queue=queue)  # fmt: skip
    sent["kafka"] += 1
    sent["redis"] += 1

    def warmed() -> bool:
        found = stack.rows("SELECT request_id FROM score_results WHERE request_id LIKE 'warm-%'")
        return {r[0] for r in found} == {"warm-k", "warm-r"}

    wait_for(warmed, timeout=180, every=0.5)
    baseline_mb = tree_rss_mb(worker.pid)

    @seed(20261202)
    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def burst(data: st.DataObject) -> None:
        n = bursts[0]
        bursts[0] += 1
        values = [data.draw(kafka_value(f"fk-{n}-{i}")) for i in range(BURST)]
        texts = [data.draw(wire_text(f"fr-{n}-{i}")) for i in range(BURST - 1)]
        big = {**demo_requests(1)[0], "request_id": f"fr-{n}-big"}
        texts.append(json.dumps({**big, "metadata": {"blob": "x" * 11_000_000}}))  # over 10 MB
        with EventProducer(stack.settings().kafka) as producer:
            assert producer.send_raw(values) == BURST
        with celery.producer_or_acquire() as publisher:
            for i in range(0, BURST, 10):
                celery.send_task(
                    "scoring.score",
                    args=[texts[i : i + 10]],
                    kwargs={"source": "redis"},
                    queue=queue,
                    producer=publisher,
                )
        sent["kafka"] += BURST
        sent["redis"] += BURST
        # A valid request after the burst, on each path, is still scored.
        valid = demo_requests(1, prefix=f"after-{n}")[0]
        with EventProducer(stack.settings().kafka) as producer:
            assert producer.send([{**valid, "request_id": f"after-k-{n}"}]) == 1
        celery.send_task("scoring.score", args=[[{**valid, "request_id": f"after-r-{n}"}]],
                         kwargs={"source": "redis"}, queue=queue)  # fmt: skip
        sent["kafka"] += 1
        sent["redis"] += 1

        def scored() -> bool:
            found = stack.rows(
                "SELECT request_id FROM score_results WHERE request_id LIKE 'after-%'"
            )
            ids = {r[0] for r in found}
            return {f"after-k-{n}", f"after-r-{n}"} <= ids

        wait_for(scored, timeout=180, every=0.5)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]

    burst()

    def settled() -> bool:
        rows = stack.scalar("SELECT count(*) FROM score_results")
        letters = dlq_records(stack) + client.llen(f"{queue}.dlq")
        return rows + letters >= sent["kafka"] + sent["redis"]

    wait_for(settled, timeout=180, every=1)
    rows = stack.scalar("SELECT count(*) FROM score_results")
    kafka_letters, redis_letters = dlq_records(stack), client.llen(f"{queue}.dlq")
    assert rows + kafka_letters + redis_letters == sent["kafka"] + sent["redis"]
    by_source = dict(stack.rows("SELECT source, count(*) FROM score_results GROUP BY source"))
    assert by_source.get("kafka", 0) + kafka_letters == sent["kafka"]
    assert by_source.get("redis", 0) + redis_letters == sent["redis"]
    assert worker.poll() is None
    grown_mb = tree_rss_mb(worker.pid) - baseline_mb
    print(f"worker RSS {baseline_mb:.0f} MB after warm-up, grew {grown_mb:.0f} MB")
    assert grown_mb < RSS_GROWTH_MB, (baseline_mb, grown_mb)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
