"""Duplicates never double a row nor raise: the same request twice in one micro-batch,
and two real worker processes racing to store the same requests at the same time."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from schemas.db import make_engine
from tests.helpers import (
    count_results,
    demo_requests,
    run_scoring,
    wait_for,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def settled(redis_url: str, queue: str) -> bool:
    """Nothing queued and nothing held: every message was acknowledged."""
    client = redis.Redis.from_url(redis_url)
    lists = [k for k in client.scan_iter(match=f"{queue}*") if client.type(k) == b"list"]
    return sum(client.llen(k) for k in lists) == 0 and client.hlen("unacked") == 0


def test_two_workers_racing_on_the_same_requests_store_one_row_each(
    redis_url: str, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    s = make_settings(broker={"url": redis_url})
    beats = tmp_path / "beats"
    env = worker_env(redis_url, pg_url, s, SCORING_HEARTBEAT_DIR=str(beats))
    assert run_scoring("models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    n = 3_000
    requests = demo_requests(n, prefix="race")
    # Each message holds every request twice (a duplicate inside one micro-batch), and the
    # whole set is sent twice, so the two workers store the same ids at the same time.
    doubled = [r for r in requests for _ in (0, 1)]
    producer = RedisProducer(celery_app(s.broker))
    procs = [worker_process(env, f"racer-{i}", tmp_path / f"racer-{i}.log") for i in (0, 1)]
    try:
        wait_for(lambda: len(list(beats.glob("racer-*.json"))) == 2, timeout=180, every=0.5)
        producer.send(doubled, per_message=64)
        producer.send(doubled, per_message=64)
        engine = make_engine(pg_url)
        wait_for(lambda: count_results(engine) >= n, timeout=240, every=0.5)
        wait_for(lambda: settled(redis_url, s.broker.requests_queue), timeout=120, every=0.5)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    assert count_results(engine) == n
    assert count_results(engine, status="ok") == n
    scored_by = [count_results(engine, worker=f"racer-{i}@{_host()}") for i in (0, 1)]
    assert sum(scored_by) == n and min(scored_by) > 0  # both raced, one row per request
    logs = "".join((tmp_path / f"racer-{i}.log").read_text(errors="replace") for i in (0, 1))
    assert "IntegrityError" not in logs and "Traceback" not in logs
    assert " ERROR " not in logs
    assert redis.Redis.from_url(redis_url).llen(s.broker.dead_letter_queue) == 0


def _host() -> str:
    import socket

    return socket.gethostname()
