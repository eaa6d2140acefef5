"""Kafka broker faults that count: the broker stopped mid-stream and started again on the
same data (consumers and the producer ride it out; nothing lost, nothing doubled), and a
batch that runs past max_poll_interval_ms (the slow member leaves the group, its
partitions move, its late commit fails cleanly, it rejoins; nothing lost or doubled)."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.services.kafka_server import BROKER_USER, CLIENT_USER, KafkaServer
from producers.kafka_producer import EventProducer
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, free_port, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "SELECT count(*), count(DISTINCT request_id) FROM score_results"
DOWN_S = 10.0  # how long the broker stays down
RESUME_BOUND_S = 60.0  # results flow again within this after the broker answers
POLL_INTERVAL_MS = 11_000  # the slow test's max_poll_interval_ms
SLOW_BATCH_S = 17.0  # one batch of the slow consumer: past the interval and its detection
SLOW_AFTER = 400  # records the slow consumer scores before its one slow batch
SLOW_CONSUMER = (
    "import sys, time\n"
    "from workers.core.pipeline import ScoringPipeline\n"
    "real, seen = ScoringPipeline.process, [0, False]\n"
    "def process(self, items):\n"
    "    seen[0] += len(items)\n"
    f"    if not seen[1] and seen[0] >= {SLOW_AFTER}:\n"
    "        seen[1] = True\n"
    "        print('fault: slow batch starts', flush=True)\n"
    f"        time.sleep({SLOW_BATCH_S})  # scoring, then storing, past the poll interval\n"
    "        print('fault: slow batch stores', flush=True)\n"
    "    return real(self, items)\n"
    "ScoringPipeline.process = process\n"
    "sys.argv = ['scoring', 'stream']\n"
    "from scoring.cli import main\n"
    "main()\n"
)


# -- a private broker -----------------------------------------------------------------


@pytest.fixture
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A KRaft broker of this test's own (SASL/SCRAM users like the shared one's), stopped
    and its data removed afterwards, even when the test fails."""
    directory = tmp_path_factory.mktemp("private-kafka")
    server = KafkaServer(
        free_port(pair=True),
        directory / "kafka",
        users={CLIENT_USER: secrets.token_urlsafe(18), BROKER_USER: secrets.token_urlsafe(18)},
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def settings_of(server: KafkaServer) -> KafkaSettings:
    env = server.client_env()
    return KafkaSettings.model_validate(
        {k.removeprefix("SCORING_KAFKA_").lower(): v for k, v in env.items()}
    )


def topic_maker(kafka: KafkaSettings) -> Callable[[str, int], str]:
    """make_topic for the private broker (its topics go with its data)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    def make(prefix: str = "test", partitions: int = 4) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(**kafka.client_config(), client_id="scoring-tests")
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        return name

    return make


class SteadyProducer(threading.Thread):
    """Publishes `requests` in batches every `every_s` seconds through EventProducer; each
    batch waits for its confirmations, so a broker outage blocks it while kafka-python
    retries. `sent` is how many were handed over so far, `confirmed` how many confirmed."""

    def __init__(
        self, kafka: KafkaSettings, requests: list[dict], batch: int, every_s: float
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.kafka, self.requests, self.batch, self.every_s = kafka, requests, batch, every_s
        self.sent = self.confirmed = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with EventProducer(self.kafka) as producer:
                for start in range(0, len(self.requests), self.batch):
                    chunk = self.requests[start : start + self.batch]
                    self.sent += len(chunk)
                    self.confirmed += producer.send(chunk)
                    time.sleep(self.every_s)  # the stream's pace, not a wait for a condition
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.done.set()


def alive(stack: KafkaStack, *names: str) -> None:
    for name in names:
        assert stack.procs[name].poll() is None, f"{name} exited:\n{stack.log(name)[-3000:]}"


def lag(stack: KafkaStack) -> int:
    return sum(p.lag for p in consumer_lag(stack.settings().kafka))


def distinct_ids(stack: KafkaStack, topic: str, n: int) -> Counter[str]:
    return Counter(json.loads(r.value)["request_id"] for r in read_topic(stack.client, topic, n))


def test_broker_restart_mid_stream_consumers_resume_and_nothing_is_lost(
    private_kafka: KafkaServer, pg_url: str, tmp_path: Path, demo_artifact: Path
) -> None:
    n = 8_000
    kafka = settings_of(private_kafka)
    names = ("stream-a", "stream-b")
    with open_stack(kafka, pg_url, topic_maker(kafka), tmp_path, demo_artifact, 2, 2) as stack:
        for name in names:
            stack.start(name)
        wait_for(lambda: all(len(stack.assigned(x)) == 1 for x in names), timeout=120)
        requests = demo_requests(n, prefix="br")
        producer = SteadyProducer(stack.settings().kafka, requests, batch=200, every_s=0.2)
        producer.start()
        wait_for(lambda: stack.scalar(TABLE) >= 1_500, timeout=120, every=0.1)

        private_kafka.stop()  # SIGTERM; returns once the broker exited
        assert private_kafka.pid() is None
        before = stack.scalar(TABLE)
        assert before < n and not producer.done.is_set(), "the stop came too late"
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:  # the outage: consumers must stay up through it
            alive(stack, *names)
            time.sleep(0.5)
        private_kafka.start()
        back, sent_at_back = time.monotonic(), producer.sent

        fresh = f"{TABLE} WHERE split_part(request_id, '-', 2)::int >= {sent_at_back}"
        wait_for(lambda: stack.scalar(fresh) > 0, timeout=RESUME_BOUND_S, every=0.2)
        resumed_s = time.monotonic() - back
        producer.join(180)
        assert producer.error is None, producer.error
        assert producer.confirmed == n
        wait_for(lambda: stack.scalar(TABLE) >= n, timeout=120, every=0.5)
        wait_for(lambda: lag(stack) == 0, timeout=60, every=0.5)
        alive(stack, *names)
        for name in names:
            assert stack.stop(name) == 0, stack.log(name)[-3000:]

        assert tuple(stack.rows(TABLE)[0]) == (n, n)
        assert lag(stack) == 0
        ids = distinct_ids(stack, stack.results, n)
        assert set(ids) == {r["request_id"] for r in requests}
        assert read_topic(stack.client, stack.dlq, 0) == []
        print(
            f"broker down {DOWN_S:.0f}s with {before} of {n} stored; results again "
            f"{resumed_s:.1f}s after it answered; result events {sum(ids.values())}"
        )


# -- a batch past max_poll_interval_ms ------------------------------------------------


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 2) as s:
        yield s


def test_a_batch_past_max_poll_interval_rebalances_without_loss_or_double_rows(
    stack: KafkaStack,
) -> None:
    n = 4_000
    env = {
        "SCORING_KAFKA_MAX_POLL_INTERVAL_MS": str(POLL_INTERVAL_MS),
        "SCORING_KAFKA_MAX_POLL_RECORDS": "100",
        "SCORING_DB_RETRIES": "2",  # the poll budget: 1 batch x (0.15 s + 5 s) < 5.5 s
    }
    stack.start("steady", extra_env=env)
    stack.start("slow", "-c", SLOW_CONSUMER, python=True, extra_env=env)
    wait_for(lambda: all(len(stack.assigned(x)) == 1 for x in ("steady", "slow")), timeout=120)
    requests = demo_requests(n, prefix="slow")
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send(requests) == n

    # The slow member overstays its poll interval: kafka-python's heartbeat thread leaves
    # the group, and the steady member takes both partitions.
    wait_for(lambda: "fault: slow batch starts" in stack.log("slow"), timeout=120)
    wait_for(lambda: len(stack.assigned("steady")) == 2, timeout=60)
    wait_for(lambda: "fault: slow batch stores" in stack.log("slow"), timeout=60)
    # It finishes its batch, its commit is refused, it loses its partitions and rejoins.
    wait_for(lambda: "partitions lost" in stack.log("slow"), timeout=60)
    wait_for(lambda: all(len(stack.assigned(x)) == 1 for x in ("steady", "slow")), timeout=60)
    wait_for(lambda: stack.scalar(TABLE) >= n, timeout=120, every=0.5)
    wait_for(lambda: lag(stack) == 0, timeout=60, every=0.5)
    alive(stack, "steady", "slow")
    for name in ("steady", "slow"):
        assert stack.stop(name) == 0, stack.log(name)[-3000:]

    slow_log = stack.log("slow")
    assert slow_log.count("fault: slow batch starts") == 1
    assert "poll timeout has expired" in slow_log
    assert "offset commit failed (CommitFailedError" in slow_log
    assert "reconnecting" not in slow_log  # handled in place, not by a new consumer
    assert tuple(stack.rows(TABLE)[0]) == (n, n)
    assert lag(stack) == 0
    ids = distinct_ids(stack, stack.results, n)
    assert set(ids) == {r["request_id"] for r in requests}
    assert read_topic(stack.client, stack.dlq, 0) == []
