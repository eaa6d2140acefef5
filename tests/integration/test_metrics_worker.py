"""`scoring worker --cpu 2` with SCORING_METRICS_PORT: each process serves its own port,
and what they export adds up to exactly what was sent and stored."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from schemas.db import make_engine, session_scope
from schemas.tables import BatchMetric
from tests.helpers import count_results, demo_requests, free_port, run_scoring, wait_for, worker_env

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    out = []
    for line in body.decode().splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            out.append((match.group(1), labels, float(match.group(3))))
    return out


def total(samples: list, name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_two_processes_on_one_host_serve_their_own_ports_and_count_exactly(
    redis_url: str, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    s = make_settings(broker={"url": redis_url})
    port = free_port(pair=True)
    env = worker_env(redis_url, pg_url, s, SCORING_METRICS_PORT=str(port))
    registered = run_scoring("models", "register", "demo", str(demo_artifact), env=env)
    assert registered.returncode == 0, registered.stderr
    log = tmp_path / "workers.log"
    with log.open("wb") as fh:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "2"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    n, dead = 200, 3
    try:
        # Each process serves its port before it warms up, and consumes only after: both
        # warm-up lines (the process's own, not the version watcher's) mean both consume.
        warm = re.compile(r"(__main__|workers\.process): warmed up")
        wait_for(lambda: len(warm.findall(log.read_text(errors="replace"))) >= 2, timeout=180)
        assert answers(port) and answers(port + 1), log.read_text()
        producer = RedisProducer(celery_app(s.broker))
        producer.send(demo_requests(n), per_message=8)
        unknown = [dict(r, model="nope") for r in demo_requests(dead, prefix="x")]
        producer.send(unknown, per_message=1, validate=False)
        engine = make_engine(pg_url)
        wait_for(lambda: count_results(engine) == n, timeout=120, every=0.2)

        def scraped() -> list:
            return scrape(port) + scrape(port + 1)

        # results are committed just before the hook runs: wait for the last hook
        wait_for(
            lambda: total(scraped(), "scoring_batch_size_requests_sum") == n + dead,
            timeout=30,
        )
        samples = scraped()
        with session_scope(engine) as session:
            calls = int(session.scalar(select(func.count()).select_from(BatchMetric)) or 0)
        assert total(samples, "scoring_requests_total", status="ok", model="demo") == n
        assert total(samples, "scoring_requests_total") == n + dead
        assert total(samples, "scoring_requests_total", status="dead") == dead
        assert total(samples, "scoring_dead_letters_total", reason="unknown_model") == dead
        assert total(samples, "scoring_queue_wait_seconds_count", source="redis") == n
        assert total(samples, "scoring_inference_seconds_count", model="demo") == calls > 0
        batches = total(samples, "scoring_batch_size_requests_count")
        assert batches == total(samples, "scoring_batches_total", stored="true") >= 1
        assert total(samples, "scoring_batch_seconds_count") == batches
        assert total(samples, "scoring_batches_in_flight") == 0
        # each process reports its own loaded version, under its own name
        workers = {
            lab["worker"].split("@")[0]
            for name, lab, v in samples
            if name == "scoring_model_info" and lab["backend"] == "eager" and v == 1
        }
        assert workers == {"cpu0", "cpu1"}
        queue = s.broker.requests_queue
        assert total(scrape(port), "scoring_redis_queue_length", queue=queue) == 0
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        client = redis.Redis.from_url(redis_url)
        client.delete(s.broker.requests_queue, s.broker.dead_letter_queue)
