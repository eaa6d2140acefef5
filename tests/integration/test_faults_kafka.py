"""Kafka faults that count: a consumer killed after its results are stored and before its
offsets are committed (the next owner scores those records again and the upsert writes
nothing new), and a SIGTERM with batches in flight (they finish, their offsets are
committed, the member leaves the group at once: nothing waits for a session timeout)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from producers.kafka_producer import EventProducer
from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULTS = "SELECT count(*) FROM score_results"
EXIT_BEFORE_COMMIT = (
    "import os, sys\n"
    "from workers.sources.kafka.source import StreamWorker\n"
    "real = StreamWorker.commit\n"
    "def commit(self, partitions=None):\n"
    "    if self.book.to_commit(partitions):\n"
    "        os._exit(9)  # results stored and published, offsets not committed\n"
    "    return real(self, partitions)\n"
    "StreamWorker.commit = commit\n"
    "sys.argv = ['scoring', 'stream']\n"
    "from scoring.cli import main\n"
    "main()\n"
)


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 2) as s:
        yield s


def produce(stack: KafkaStack, n: int, prefix: str) -> None:
    with EventProducer(stack.settings().kafka) as producer:
        assert producer.send(demo_requests(n, prefix=prefix)) == n


def committed(stack: KafkaStack) -> int:
    return sum(p.committed or 0 for p in consumer_lag(stack.settings().kafka))


def members(stack: KafkaStack) -> int:
    admin = KafkaAdminClient(**stack.client)
    try:
        group = admin.describe_groups([stack.group])[stack.group]
        return len(group.get("members") or [])
    finally:
        admin.close()


def polled(stack: KafkaStack, name: str) -> int:
    found = re.findall(r"polled=(\d+)", stack.log(name))
    return int(found[-1]) if found else -1


def test_killed_between_storing_and_committing_the_next_owner_writes_nothing_new(
    stack: KafkaStack,
) -> None:
    n = 3_000
    produce(stack, n, "commit")
    crasher = stack.start("crasher", "-c", EXIT_BEFORE_COMMIT, python=True)
    assert crasher.wait(180) == 9, stack.log("crasher")[-3000:]
    stored_by_crasher = stack.scalar(RESULTS)
    at_crash = committed(stack)  # (a rebalance at its start may have committed some)
    assert stored_by_crasher > at_crash  # it died with results stored and not committed
    stack.start("next")
    wait_for(lambda: stack.scalar(RESULTS) >= n, timeout=180, every=0.5)
    assert stack.stop("next") == 0
    rows, distinct = stack.rows("SELECT count(*), count(DISTINCT request_id) FROM score_results")[0]
    assert (rows, distinct) == (n, n)
    # The next owner read again every record not committed, and the crasher's rows stayed
    # as they were: the upsert wrote nothing new.
    assert polled(stack, "next") == n - at_crash
    mine = "SELECT count(*) FROM score_results WHERE worker LIKE 'crasher@%'"
    assert stack.scalar(mine) == stored_by_crasher
    assert sum(p.lag for p in consumer_lag(stack.settings().kafka)) == 0


def test_sigterm_mid_stream_finishes_commits_and_leaves_the_group_at_once(
    stack: KafkaStack,
) -> None:
    n = 20_000
    stack.start("first")
    wait_for(lambda: len(stack.assigned("first")) == 2, timeout=120)
    produce(stack, n, "term")
    wait_for(lambda: stack.scalar(RESULTS) >= 2_000, timeout=240, every=0.1)
    assert stack.stop("first", timeout=30) == 0, stack.log("first")[-3000:]  # the bound
    at_exit = stack.scalar(RESULTS)
    assert at_exit < n, "SIGTERM came too late to land mid-stream"
    # Every result it stored is committed, nothing more: no record waits for a redelivery
    # and none is skipped; and it left the group instead of waiting out its session.
    assert committed(stack) == at_exit
    assert members(stack) == 0
    stack.start("second")
    wait_for(lambda: stack.scalar(RESULTS) >= n, timeout=240, every=0.5)
    assert stack.stop("second") == 0
    rows, distinct = stack.rows("SELECT count(*), count(DISTINCT request_id) FROM score_results")[0]
    assert (rows, distinct) == (n, n)
    assert polled(stack, "second") == n - at_exit
