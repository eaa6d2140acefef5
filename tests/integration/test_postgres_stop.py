"""The PostgreSQL server itself stopped for 20 s (`pg_ctl stop -m fast`: every session is
terminated, the port refuses connections) and started again on the same data directory,
under steady load on both paths at once: a Celery worker on a Redis queue and a
`scoring stream` consumer. Batches retry with backoff and go back to their source;
nothing is acknowledged or committed before it is stored, neither process crashes or
restarts, and each logs the outage as a few lines per refused batch, no tracebacks."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy.services.postgres_server import PostgresServer
from producers.kafka_producer import EventProducer
from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from schemas.db import upgrade
from schemas.settings import BrokerSettings, KafkaSettings
from tests.helpers import demo_requests, free_port, wait_for, worker_env, worker_process
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from tests.integration.test_faults_celery import dead_letters, nothing_left
from tests.integration.test_faults_kafka import committed
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "pg-stop-test-pw-5"
OUTAGE_S = 20.0
# The product's defaults (schemas/settings.py), set explicitly: the log bound uses them.
RETRIES, BACKOFF_S = 5, 0.5
GIVE_UP_S = sum(BACKOFF_S * 2**i for i in range(RETRIES))  # 15.5 s of sleeps per attempt
PER_ROUND, EVERY_S = 40, 0.25  # requests per path per round: 160/s on each path
CELERY, STREAM = "celery-w", "stream-w"
SOURCES = ("redis", "kafka")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own (it is stopped), migrated like any other;
    commit timestamps on, to tell the rows stored before the stop from those after."""
    base = Path(tempfile.mkdtemp(prefix="scoring-pgstop-"))
    base.chmod(0o755)  # the `postgres` user reaches its cluster below
    (base / "pg").mkdir()
    server = PostgresServer(
        free_port(), PASSWORD, base=base / "pg", conf=["track_commit_timestamp = on"]
    )
    try:
        server.start()
        upgrade(server.url())
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class Feeder:
    """Requests to both paths at a steady rate on a thread of its own, until stopped;
    counts what Redis and Kafka confirmed."""

    def __init__(self, broker: BrokerSettings, kafka: KafkaSettings) -> None:
        self.redis = RedisProducer(celery_app(broker), broker.requests_queue)
        self.kafka = EventProducer(kafka).open()
        self.sent = {"redis": 0, "kafka": 0}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.kafka.close()
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}") from self.error

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.wait(EVERY_S):
                self.sent["redis"] += self.redis.send(demo_requests(PER_ROUND, f"redis-{n}", n))
                self.sent["kafka"] += self.kafka.send(demo_requests(PER_ROUND, f"kafka-{n}", n))
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc


def by_source(stack: KafkaStack) -> dict[str, tuple[int, int]]:
    """(rows, distinct request ids) per source."""
    rows = stack.rows(
        "SELECT source, count(*), count(DISTINCT request_id) FROM score_results GROUP BY 1"
    )
    return {source: (int(n), int(distinct)) for source, n, distinct in rows}


def stored(stack: KafkaStack, source: str) -> int:
    return by_source(stack).get(source, (0, 0))[0]


def outage_lines(log: str) -> dict[str, int]:
    return {
        "redelivered": log.count("not stored, will be redelivered"),
        "write retries": log.count("database write failed"),
        "warnings and errors": sum(  # the project's own, not kafka-python's
            (" WARNING workers." in line or " ERROR workers." in line) for line in log.splitlines()
        ),
    }


@pytest.mark.timeout(400)  # 20 s of outage plus two cold worker starts on a busy 2-core box
def test_a_postgres_server_stopped_for_20s_loses_doubles_and_crashes_nothing(
    own_postgres: PostgresServer,
    redis_url: str,
    kafka_settings: KafkaSettings,
    make_settings,
    make_topic,
    tmp_path: Path,
    demo_artifact: Path,
) -> None:
    pg = own_postgres
    db_url = pg.url()
    retry_env = {"SCORING_DB_RETRIES": str(RETRIES), "SCORING_DB_RETRY_BACKOFF_S": str(BACKOFF_S)}
    settings = make_settings(broker={"url": redis_url})
    env = worker_env(redis_url, db_url, settings, **retry_env)
    client = redis.Redis.from_url(redis_url)
    with open_stack(kafka_settings, db_url, make_topic, tmp_path, demo_artifact, 2, 2) as stack:
        celery = worker_process(env, CELERY, tmp_path / f"{CELERY}.log")
        stack.procs[CELERY] = celery  # stopped with the stack's own processes
        stream = stack.start(STREAM, extra_env=retry_env)
        try:
            wait_for(lambda: "warmed up" in stack.log(CELERY), timeout=180, every=0.2)
            wait_for(lambda: len(stack.assigned(STREAM)) == 2, timeout=180, every=0.2)
            with Feeder(settings.broker, stack.settings().kafka) as feeder:
                wait_for(
                    lambda: all(stored(stack, s) >= 300 for s in SOURCES),
                    timeout=120,
                    every=0.2,
                )
                stopped_at = time.monotonic()
                pg.stop("fast")  # the server, not a proxy: sessions terminated, port closed
                assert not pg.answers()
                time.sleep(OUTAGE_S)  # the fault itself
                committed_in_outage = committed(stack)
                restart_wall = time.time()
                pg.start()  # the same data directory
                down_s = time.monotonic() - stopped_at
                fed_at_restart = dict(feeder.sent)
                # The load goes on until both paths have stored well past the backlog.
                wait_for(
                    lambda: all(stored(stack, s) > fed_at_restart[s] + 500 for s in SOURCES),
                    timeout=180,
                    every=0.5,
                )
            sent = feeder.sent
            assert sent["redis"] > fed_at_restart["redis"] > 0
            assert sent["kafka"] > fed_at_restart["kafka"] > 0
            wait_for(
                lambda: (
                    stored(stack, "redis") >= sent["redis"]
                    and stored(stack, "kafka") >= sent["kafka"]
                ),
                timeout=180,
                every=0.5,
            )
            wait_for(lambda: nothing_left(env), timeout=60, every=0.2)
            # The same processes served throughout: alive, never restarted.
            assert celery.poll() is None and stream.poll() is None
            assert stack.log(CELERY).count("__main__: warmed up") == 1
        finally:
            alive = {name: proc.poll() is None for name, proc in stack.procs.items()}
            stack.stop_all()
            client.delete(settings.broker.requests_queue, settings.broker.dead_letter_queue)
        assert alive == {CELERY: True, STREAM: True}
        assert celery.returncode == 0 and stream.returncode == 0
        assert "stream stopped" in stack.log(STREAM)

        # Every request exactly one result row, from the process that got it.
        assert by_source(stack) == {
            "redis": (sent["redis"], sent["redis"]),
            "kafka": (sent["kafka"], sent["kafka"]),
        }
        workers = dict(
            stack.rows("SELECT source, count(DISTINCT worker) FROM score_results GROUP BY 1")
        )
        assert workers == {"redis": 1, "kafka": 1}
        # Nothing acknowledged or committed before it was stored: the queue and `unacked`
        # are empty, nothing was dead-lettered, and the group committed exactly what was
        # stored; what it committed during the outage had been stored before the stop.
        assert nothing_left(env) and dead_letters(env) == 0
        assert read_topic(stack.client, stack.dlq, at_least=0, timeout=10) == []
        lags = consumer_lag(stack.settings().kafka)
        assert sum(p.committed or 0 for p in lags) == sent["kafka"]
        assert sum(p.lag for p in lags) == 0
        before_stop = stack.scalar(
            "SELECT count(*) FROM score_results WHERE source = 'kafka' AND "
            f"pg_xact_commit_timestamp(xmin) < to_timestamp({restart_wall})"
        )
        assert committed_in_outage <= before_stop < sent["kafka"]

        print(f"sent {sent}, committed in the outage {committed_in_outage}, down {down_s:.1f}s")
        # The outage in the logs: a few lines per refused batch, bounded by the backoff
        # (the scorer thread sleeps GIVE_UP_S before it gives a batch back), no traceback.
        most = int(down_s / GIVE_UP_S) + 2
        for name, sent_back in ((CELERY, "re-queued"), (STREAM, "rewound")):
            log = stack.log(name)
            lines = outage_lines(log)
            assert "Traceback" not in log and "failed unexpectedly" not in log, log[-3000:]
            assert sent_back in log, log[-3000:]
            assert 1 <= lines["redelivered"] <= most, (name, lines, down_s)
            assert lines["write retries"] <= RETRIES * (lines["redelivered"] + 1), (name, lines)
            assert lines["warnings and errors"] <= 10 * (lines["redelivered"] + 1), (name, lines)
            print(name, lines)
