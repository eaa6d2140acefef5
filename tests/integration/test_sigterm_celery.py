"""SIGTERM mid-batch on the Redis/Celery side, with work in flight: the flush in hand is
scored, stored and acknowledged; every other message the worker held (buffered by
celery-batches, or a retry waiting for its countdown) is back on the queue the moment the
process has exited, not after the 60 s visibility timeout; a second worker scores the
rest, and every request ends with exactly one result."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from producers.redis_producer import RedisProducer
from schemas import names
from schemas.broker import celery_app
from schemas.db import make_engine
from schemas.settings import Settings
from tests.helpers import count_results, demo_requests, run_scoring, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXIT_BOUND_S = 30.0  # SIGTERM to exit 0; a batch in hand takes about TEST_BATCH_DELAY_S
VISIBILITY_S = 60  # the production default: a stranded message would wait this long
SINGLES = 1_500  # per-event messages of one request each
RETRIES = 20  # messages with a countdown, held by the worker and never in a batch
COUNTDOWN_S = 20
# `python -m workers.process` as `scoring worker` starts it, with a model that takes
# TEST_BATCH_DELAY_S per micro-batch (test-only: patched in this launcher), so that a
# batch is always in hand and the prefetch is full when the signal lands.
SLOW_WORKER = (
    "import os, runpy, sys, time\n"
    "from workers.core.pipeline import ScoringPipeline\n"
    "delay = float(os.environ.get('TEST_BATCH_DELAY_S', '0'))\n"
    "real = ScoringPipeline.process\n"
    "def process(self, items):\n"
    "    time.sleep(delay)\n"
    "    return real(self, items)\n"
    "ScoringPipeline.process = process\n"
    "sys.argv = ['workers.process']\n"
    "runpy.run_module('workers.process', run_name='__main__')\n"
)


@dataclass
class Queue:
    """What the shared Redis holds for one test's queue."""

    client: redis.Redis
    name: str

    def queued(self) -> int:
        lists = [k for k in self.client.keys(self.name + "*") if k != f"{self.name}.dlq".encode()]
        return sum(int(self.client.llen(k)) for k in lists)

    def held(self) -> dict[str, dict[str, Any]]:
        """Unacknowledged messages of this queue (kombu's `unacked` hash is shared by every
        queue of the database), by delivery tag."""
        out = {}
        for tag, raw in self.client.hgetall("unacked").items():
            message, _, routing_key = json.loads(raw)
            if routing_key == self.name:
                out[tag.decode()] = message
        return out

    def indexed(self) -> int:
        """Leases (the unacked index) of this queue's held messages, or of none at all."""
        tags = list(self.held())
        return sum(self.client.zscore("unacked_index", t) is not None for t in tags)

    def in_scoring(self) -> int:
        tags = list(self.held())
        marks = self.client.hmget(names.UNFINISHED_KEY, tags) if tags else []
        return sum(m is not None for m in marks)

    def dead_letters(self) -> int:
        return int(self.client.llen(f"{self.name}.dlq"))


def held_retries(held: dict[str, dict[str, Any]]) -> int:
    return sum(bool(m.get("headers", {}).get("eta")) for m in held.values())


def start(env: dict[str, str], name: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-c", SLOW_WORKER],
            env={**env, "SCORING_WORKER_NAME": name, **extra},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def stack(
    redis_url: str, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> Iterator[tuple[Settings, dict[str, str], list[subprocess.Popen[bytes]]]]:
    settings = make_settings(broker={"url": redis_url})
    env = worker_env(redis_url, pg_url, settings, SCORING_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S))
    registered = run_scoring("models", "register", "demo", str(demo_artifact), env=env)
    assert registered.returncode == 0, registered.stderr
    procs: list[subprocess.Popen[bytes]] = []
    client = redis.Redis.from_url(redis_url)
    try:
        yield settings, env, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        queue = settings.broker.requests_queue
        held = Queue(client, queue).held()
        if held:
            client.hdel("unacked", *held)
            client.zrem("unacked_index", *held)
        client.delete(*client.keys(queue + "*"), names.DOORBELL_PREFIX + queue)


def publish(settings: Settings, engine: Any) -> set[str]:
    """SINGLES per-event messages, with RETRIES re-published ones (a countdown) once the
    first 5 are stored (a worker's prefetch is one message until its first flush, and a
    message waiting for its countdown holds a place in it); returns every request id."""
    app = celery_app(settings.broker)
    producer = RedisProducer(app)
    singles = demo_requests(SINGLES, prefix="one")
    retries = demo_requests(RETRIES, prefix="retry", seed=1)
    producer.send(singles[:5], per_message=1)
    wait_for(lambda: count_results(engine) >= 5, timeout=60, every=0.1)
    for request in retries:
        kwargs = {"source": names.SOURCE_REDIS, "attempt": 2, "enqueued_at": time.time()}
        app.send_task(
            names.SCORE_TASK,
            args=[[request]],
            kwargs=kwargs,
            queue=settings.broker.requests_queue,
            countdown=COUNTDOWN_S,
        )
    producer.send(singles[5:], per_message=1)
    return {r["request_id"] for r in singles + retries}


def stored(pg_url: str) -> dict[str, int]:
    with make_engine(pg_url).connect() as conn:
        sql = text("SELECT request_id, count(*) FROM score_results GROUP BY request_id")
        return dict(conn.execute(sql).all())


@dataclass
class Stopped:
    """What a worker left behind the instant it exited."""

    code: int
    exit_s: float
    held_at_signal: int
    stored: int
    queued: int
    held: dict[str, dict[str, Any]]
    log: str


def stop_mid_batch(
    proc: subprocess.Popen[bytes], queue: Queue, engine: Any, log: Path, signals: int
) -> Stopped:
    """Wait until the worker holds every retry and scores a batch, send SIGTERM `signals`
    times, wait for the exit (at most EXIT_BOUND_S) and read the queue at once."""

    def busy() -> bool:
        held = queue.held()
        return held_retries(held) == RETRIES and queue.in_scoring() > 0 and len(held) > RETRIES

    try:
        wait_for(busy, timeout=120, every=0.05)
    except AssertionError:
        held = queue.held()
        raise AssertionError(
            f"never busy: {len(held)} held, {held_retries(held)} retries, "
            f"{queue.in_scoring()} in scoring, {count_results(engine)} stored"
        ) from None
    held_at_signal = len(queue.held())
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for _ in range(signals - 1):
        wait_for(lambda: "Warm shutdown" in log.read_text(errors="replace"), timeout=10, every=0.01)
        proc.send_signal(signal.SIGTERM)  # lands during the warm shutdown
    try:
        code = proc.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {EXIT_BOUND_S}s after SIGTERM: {log.read_text()[-3000:]}")
    exit_s = time.monotonic() - signalled
    held, queued, stored = queue.held(), queue.queued(), count_results(engine)
    return Stopped(
        code, exit_s, held_at_signal, stored, queued, held, log.read_text(errors="replace")
    )


def test_sigterm_mid_batch_finishes_the_batch_and_puts_back_the_rest_at_once(
    stack, pg_url: str, tmp_path: Path
) -> None:
    """The first worker gets one SIGTERM, the second two (the second lands during its warm
    shutdown); each exits 0 in time with nothing held; a third scores the rest."""
    settings, env, procs = stack
    queue = Queue(redis.Redis.from_url(env["SCORING_BROKER_URL"]), settings.broker.requests_queue)
    engine = make_engine(pg_url)
    slow = {"TEST_BATCH_DELAY_S": "0.5", "SCORING_WORKER_FLUSH_INTERVAL_S": "0.5"}
    first = start(env, "first", tmp_path / "first.log", **slow)
    procs.append(first)
    wait_for(lambda: "warmed up" in (tmp_path / "first.log").read_text(), timeout=120)
    every = publish(settings, engine)
    total = len(every)
    figures = []
    for name, signals in (("first", 1), ("second", 2)):
        if name != "first":
            procs.append(start(env, name, tmp_path / f"{name}.log", **slow))
        stopped = stop_mid_batch(procs[-1], queue, engine, tmp_path / f"{name}.log", signals)
        assert stopped.code == 0, stopped.log[-3000:]
        # Nothing it held is stranded (a stranded message would wait out its 60 s lease):
        # what it scored is stored and acknowledged, the rest is back on the queue.
        assert stopped.held == {}, f"{len(stopped.held)} messages stranded by {name}"
        assert stopped.stored + stopped.queued == total, (name, stopped.stored, stopped.queued)
        assert stopped.stored < total - RETRIES
        figures.append((name, signals, stopped))
        signalled_at = time.monotonic() - stopped.exit_s

    third = start(env, "third", tmp_path / "third.log")
    procs.append(third)
    wait_for(lambda: count_results(engine, worker=f"third@{socket.gethostname()}") > 0, timeout=120)
    picked_up_s = time.monotonic() - signalled_at
    wait_for(lambda: count_results(engine) >= total, timeout=120, every=0.2)
    third.send_signal(signal.SIGTERM)
    assert third.wait(EXIT_BOUND_S) == 0
    results = stored(pg_url)
    assert set(results) == every
    assert {r: n for r, n in results.items() if n != 1} == {}
    assert queue.dead_letters() == 0
    assert queue.held() == {} and queue.queued() == 0
    for name, signals, s in figures:
        print(
            f"{name} ({signals} SIGTERM): held {s.held_at_signal}, exit 0 after {s.exit_s:.1f} s, "
            f"{s.stored} stored, {s.queued} back on the queue, 0 held"
        )
    print(f"third worker's first result {picked_up_s:.1f} s after the last SIGTERM")
