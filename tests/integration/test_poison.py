"""A request that kills the worker every time it is scored (the model takes the process
down: `os._exit`, a segfault) is dead-lettered with the reason after
SCORING_MAX_DELIVERIES deaths, instead of crash-looping the worker; every other request
has exactly one result; the deaths are bounded. A supervisor (this test) restarts the
worker each time it dies, as a container runtime would."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from schemas.db import make_engine
from tests.helpers import demo_requests, run_scoring, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POISON = "many-5"
MAX_DELIVERIES = 2
# The worker as `scoring worker` starts it, with a model that exits the process whenever
# the poison request is in the batch it is given (test-only: patched in this launcher).
DIES_ON_POISON = (
    "import os, runpy, sys\n"
    "from workers.core.chunks import RowChunk\n"
    "from workers.core.pipeline import ScoringPipeline\n"
    "poison = os.environ['TEST_POISON_REQUEST_ID']\n"
    "real = ScoringPipeline.process\n"
    "def ids(item):\n"
    "    p = item.payload\n"
    "    if isinstance(p, RowChunk):\n"
    "        return [r['request_id'] for r in p.requests()] if p.rows is not None else []\n"
    "    return [p.get('request_id')] if isinstance(p, dict) else []\n"
    "def process(self, items):\n"
    "    if any(poison in ids(i) for i in items):\n"
    "        os._exit(1)  # the model took the process down\n"
    "    return real(self, items)\n"
    "ScoringPipeline.process = process\n"
    "sys.argv = ['workers.process']\n"
    "runpy.run_module('workers.process', run_name='__main__')\n"
)


def start(env: dict[str, str], log: Path, n: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        fh.write(f"--- start {n}\n".encode())
        fh.flush()
        return subprocess.Popen(
            [sys.executable, "-c", DIES_ON_POISON],
            env={**env, "SCORING_WORKER_NAME": f"w{n}"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def test_a_request_that_kills_the_worker_is_dead_lettered_after_n_deaths(
    redis_url: str, sqlite_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    settings = make_settings(broker={"url": redis_url})
    env = worker_env(
        redis_url,
        sqlite_url,
        settings,
        SCORING_VISIBILITY_TIMEOUT_S="2",  # a dead worker's messages return within ~3 s
        SCORING_MAX_DELIVERIES=str(MAX_DELIVERIES),
        TEST_POISON_REQUEST_ID=POISON,
    )
    assert run_scoring("models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    queue, dlq = settings.broker.requests_queue, settings.broker.dead_letter_queue
    client = redis.Redis.from_url(redis_url)
    many = demo_requests(8, prefix="many")  # one message of 8, the poison among them
    singles = demo_requests(24, prefix="one", seed=1)  # and 24 messages of one request
    producer = RedisProducer(celery_app(settings.broker))
    producer.send(many, per_message=8)
    producer.send(singles, per_message=1)
    innocent = {r["request_id"] for r in many + singles} - {POISON}

    engine = make_engine(sqlite_url)

    def stored() -> dict[str, int]:
        with engine.connect() as conn:
            sql = text("SELECT request_id, count(*) FROM score_results GROUP BY request_id")
            return dict(conn.execute(sql).all())

    def settled() -> bool:
        queued = sum(client.llen(k) for k in client.keys(queue + "*") if k != dlq.encode())
        held = sum(queue.encode() in raw for raw in client.hvals("unacked"))
        return client.llen(dlq) >= 1 and queued == 0 and held == 0 and set(stored()) >= innocent

    log = tmp_path / "worker.log"
    deaths, codes = 0, []
    started = time.monotonic()
    proc = start(env, log, 0)
    try:
        while not settled():
            assert time.monotonic() - started < 120, (
                f"not settled after {deaths} deaths: {log.read_text(errors='replace')[-3000:]}"
            )
            if proc.poll() is not None:  # the supervisor: a dead worker is started again
                deaths += 1
                codes.append(proc.returncode)
                assert deaths <= 20, "crash-looping"
                proc = start(env, log, deaths)
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    elapsed = time.monotonic() - started
    try:
        results = stored()
        assert POISON not in results
        assert {r: results.get(r, 0) for r in innocent} == dict.fromkeys(innocent, 1)
        assert set(results) == innocent
        assert client.llen(dlq) == 1
        with celery_app(settings.broker).connection_for_read() as conn:
            parked = conn.SimpleQueue(dlq)
            message = parked.get(timeout=10)
            body = message.decode()
            message.ack()
            parked.close()
        assert body["reason"] == f"the worker died while scoring it {MAX_DELIVERIES} times"
        assert POISON in body["payload"]
        # Two deaths in batches (with the others, then with the flush's suspects), one per
        # halving alone (8 -> 4 -> 2), then N alone: at most N + log2(8) + 1.
        assert deaths <= MAX_DELIVERIES + math.log2(len(many)) + 1, deaths
        assert deaths >= MAX_DELIVERIES
        assert set(codes) == {1}
        assert "split into two messages" in log.read_text(errors="replace")
        print(f"settled in {elapsed:.1f} s after {deaths} worker deaths")
    finally:
        client.delete(*client.keys(queue + "*"), dlq)
