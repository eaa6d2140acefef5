"""Workers on separate hosts: two `scoring worker --kafka` processes, each in a network
namespace of its own that reaches Redis, Kafka and PostgreSQL only through its link. One
host's link is cut mid-run (link down: no process dies, no connection is reset) for longer
than its Redis leases and its Kafka session: the other host takes its partitions and the
messages it held; the link comes back and the cut host scores again. Every request ends
with exactly one result, nothing is dead-lettered, nothing is left queued or held."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.fleet import stop_processes
from producers.kafka_producer import EventProducer
from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from schemas.settings import BrokerSettings, KafkaSettings
from tests.helpers import demo_requests, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack
from tests.integration.netns import Host, Hosts, NetnsUnavailable, hosts, leftovers
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VISIBILITY_S = 10  # a held Redis message comes back after this (default 60)
SESSION_MS = 6000  # a silent Kafka member is evicted after this (the broker's minimum)
PARTITIONS = 4
BURST = 3000
BY_WORKER = "SELECT split_part(worker, '@', 1), source, count(*) FROM score_results GROUP BY 1, 2"


def via(url: str, host: str) -> str:
    """`url` with its host (not its port or credentials) replaced by `host`."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{parts.port}"))


@dataclass
class Load:
    """A steady mixed load: every 0.2 s, 10 requests on the Redis queue (one message
    each) and 10 on the Kafka topic, until stopped; counts what it sent."""

    redis: RedisProducer
    kafka: EventProducer
    sent: dict[str, int] = field(default_factory=lambda: {"redis": 0, "kafka": 0})
    error: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        assert not self.error, self.error

    def burst(self, n: int) -> None:
        """`n` more Redis requests at once (one message each)."""
        self._add("redis", self.redis.send(demo_requests(n, prefix="burst"), per_message=1))

    def _add(self, source: str, n: int) -> None:
        with self._lock:
            self.sent[source] += n

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.wait(0.2):
                requests = demo_requests(10, prefix=f"q{i}", seed=i)
                self._add("redis", self.redis.send(requests, per_message=1))
                self._add("kafka", self.kafka.send(demo_requests(10, prefix=f"k{i}", seed=i)))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error.append(exc)


@dataclass
class Cluster:
    net: Hosts
    stack: KafkaStack
    env: dict[str, str]
    broker: BrokerSettings
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, host: Host) -> None:
        argv = host.argv(sys.executable, "-m", "workers.process", f"--queues={self.queue}")
        with (self.stack.logs / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                env={**self.env, "SCORING_WORKER_NAME": name},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def queue(self) -> str:
        return self.broker.requests_queue

    def log(self, name: str) -> str:
        return self.stack.log(name)

    def by_worker(self) -> dict[tuple[str, str], int]:
        return {(w, s): n for w, s, n in self.stack.rows(BY_WORKER)}

    def stored(self, name: str) -> int:
        return sum(n for (w, _), n in self.by_worker().items() if w == name)

    def redis(self) -> Any:
        return self.broker.redis_client()

    def held(self) -> dict[str, float]:
        """Delivery tag -> lease time of each message of this test's queue held now."""
        client = self.redis()
        leases = dict(client.zrange("unacked_index", 0, -1, withscores=True))
        tags = {}
        for tag, raw in client.hgetall("unacked").items():
            if self.queue.encode() in raw and tag in leases:
                tags[tag.decode()] = float(leases[tag])
        return tags

    def queued(self) -> int:
        client = self.redis()
        return sum(int(client.llen(k)) for k in client.keys(self.queue + "*"))

    def dead_letters(self) -> int:
        return int(self.redis().llen(self.broker.dead_letter_queue))

    def stop_all(self) -> None:
        stop_processes(self.procs.values())


def records(stack: KafkaStack, topic: str) -> int:
    """How many records `topic` holds (its end offsets: nothing is ever compacted here)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**stack.client)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


@pytest.fixture
def net() -> Iterator[Hosts]:
    try:
        with hosts(2) as made:
            yield made
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces cannot be created here: {exc}")
    assert leftovers(made.tag) == []


@pytest.fixture
def cluster(
    net: Hosts,
    kafka_settings: KafkaSettings,
    redis_url: str,
    pg_url: str,
    make_topic,
    tmp_path: Path,
    demo_artifact: Path,
) -> Iterator[Cluster]:
    ports = [urlsplit(u).port or 0 for u in (redis_url, pg_url, "//" + kafka_settings.bootstrap)]
    net.expose(*ports)
    kafka_port = ports[2]
    for i, host in enumerate(net.hosts):
        net.relay_loopback(host, [kafka_port], tmp_path / f"relay-{i}.log")
    queue = f"score-requests-test-{uuid.uuid4().hex[:8]}"
    broker = BrokerSettings(url=redis_url, requests_queue=queue, dead_letter_queue=f"{queue}.dlq")  # type: ignore[arg-type]
    with open_stack(
        kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, PARTITIONS, 1
    ) as s:
        env = {
            **s.env,
            # Redis and PostgreSQL across the link itself (the gateway's forwarders).
            "SCORING_BROKER_URL": via(redis_url, net.gateway),
            "SCORING_DATABASE_URL": via(pg_url, net.gateway),
            "SCORING_REQUESTS_QUEUE": queue,
            "SCORING_DEAD_LETTER_QUEUE": f"{queue}.dlq",
            "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
            "SCORING_KAFKA_IN_WORKER": "true",
            "SCORING_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
            "SCORING_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_MS),
        }
        made = Cluster(net=net, stack=s, env=env, broker=broker)
        try:
            yield made
        finally:
            for host in net.hosts:
                net.restore(host)  # (a cut host's worker could not shut down cleanly)
            made.stop_all()
            made.redis().delete(queue, f"{queue}.dlq")


@pytest.mark.timeout(240)  # one run of about two minutes; the default leaves no slack
def test_a_host_cut_off_mid_run_loses_and_doubles_nothing(cluster: Cluster) -> None:
    a, b = cluster.net.hosts
    cluster.start("host-a", a)
    cluster.start("host-b", b)
    stack = cluster.stack
    shares = lambda: [len(stack.assigned(n)) for n in ("host-a", "host-b")]  # noqa: E731
    wait_for(lambda: sum(shares()) == PARTITIONS and all(shares()), timeout=180, every=0.5)
    load = Load(RedisProducer(celery_app(cluster.broker)), EventProducer(stack.settings().kafka))
    load.kafka.open()
    load.start()
    try:
        # Both hosts score both sources before the cut.
        wait_for(
            lambda: (
                all(n >= 20 for n in cluster.by_worker().values()) and len(cluster.by_worker()) == 4
            ),
            timeout=120,
            every=0.2,
        )
        # A backlog, so that each host holds prefetched messages when the link goes.
        queued = cluster.queued()
        load.burst(BURST)
        wait_for(lambda: cluster.queued() < queued + BURST - 200, timeout=60, every=0.05)
        cluster.net.cut(a)
        cut_at = time.time()
        # Kafka: A's session expires and B owns every partition.
        wait_for(lambda: len(stack.assigned("host-b")) == PARTITIONS, timeout=60, every=0.2)
        moved_s = time.time() - cut_at
        # Redis: what A holds now has leases older than the cut (A cannot renew them);
        # B's are renewed every VISIBILITY_S / 4 seconds.
        wait_for(lambda: time.time() - cut_at > VISIBILITY_S / 2, timeout=30, every=0.2)
        stale = {t for t, lease in cluster.held().items() if lease < cut_at}
        a_during = cluster.stored("host-a")
        b_during = cluster.stored("host-b")
        assert stale, "host A held no Redis message when its link went down"
        # They come back after their lease and B scores and acknowledges them (A cannot
        # acknowledge anything while cut off).
        wait_for(lambda: stale.isdisjoint(cluster.held()), timeout=60, every=0.2)
        redelivered_s = time.time() - cut_at
        wait_for(lambda: cluster.stored("host-b") > b_during + 100, timeout=60, every=0.2)
        assert time.time() - cut_at > max(VISIBILITY_S, SESSION_MS / 1000)
        assert cluster.stored("host-a") == a_during  # nothing of A got through
        cluster.net.restore(a)
        down_s, restored_at = time.time() - cut_at, time.time()
        # A reconnects, rejoins the group and scores from both sources again.
        after = cluster.by_worker()
        wait_for(
            lambda: all(
                cluster.by_worker().get(("host-a", s), 0) > after.get(("host-a", s), 0)
                for s in ("redis", "kafka")
            ),
            timeout=90,
            every=0.5,
        )
        back_s = time.time() - restored_at
    finally:
        load.stop()
        load.kafka.close()
    sent = load.sent
    total = sent["redis"] + sent["kafka"]
    wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") >= total, 120, 0.5)
    wait_for(lambda: cluster.queued() == 0 and not cluster.held(), timeout=60, every=0.5)
    rows, distinct = stack.rows("SELECT count(*), count(DISTINCT request_id) FROM score_results")[0]
    counts = cluster.by_worker()
    by_source = {s: sum(n for (_, src), n in counts.items() if src == s) for s in sent}
    report = json.dumps(
        {
            "sent": sent,
            "by_worker": {f"{w}/{s}": n for (w, s), n in counts.items()},
            "held_by_a": len(stale),
            "seconds": [round(x, 1) for x in (moved_s, redelivered_s, down_s, back_s)],
        }
    )
    assert (rows, distinct) == (total, total), report  # nothing lost, nothing doubled
    assert by_source == sent, report
    assert stack.scalar("SELECT count(*) FROM score_results WHERE status <> 'ok'") == 0
    assert cluster.dead_letters() == 0
    assert records(stack, stack.dlq) == 0
    assert sum(p.lag for p in consumer_lag(stack.settings().kafka)) == 0
    for name in ("host-a", "host-b"):
        assert cluster.procs[name].poll() is None, cluster.log(name)[-3000:]
    print(report)
