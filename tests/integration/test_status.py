"""`scoring status` against a running system: a real worker process on Redis and
PostgreSQL, the suite's Kafka, and requests scored; the screen and its JSON say what is
true, and no password appears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_status_shows_queues_lag_workers_versions_and_traffic(
    redis_url: str,
    pg_url: str,
    kafka_env: dict[str, str],
    make_topic,
    make_settings,
    tmp_path: Path,
    demo_artifact: Path,
) -> None:
    s = make_settings(broker={"url": redis_url})
    topic = make_topic("requests", 3)
    beats = tmp_path / "beats"
    env = worker_env(
        redis_url,
        pg_url,
        s,
        SCORING_HEARTBEAT_DIR=str(beats),
        SCORING_KAFKA_TOPIC=topic,
        SCORING_KAFKA_GROUP=f"status-{topic}",
        **kafka_env,
    )
    assert run_scoring("models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    worker = worker_process(env, "status-worker", tmp_path / "worker.log")
    try:
        wait_for(lambda: any(beats.glob("status-worker*.json")), timeout=180, every=0.5)
        RedisProducer(celery_app(s.broker)).send(demo_requests(40, prefix="st"), per_message=8)
        wait_for(lambda: count_results(make_engine(pg_url)) >= 40, timeout=120, every=0.5)
        done = run_scoring("status", "--json", "--kafka", env=env, timeout=120)
        screen = run_scoring("status", "--no-kafka", env=env, timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["queues"]["requests"] == {"queue": s.broker.requests_queue, "waiting": 0}
    assert snap["queues"]["unacked"] == 0
    (mine,) = [w for w in snap["workers"] if w["worker"].startswith("status-worker@")]
    assert mine["queues"] == [s.broker.requests_queue]
    assert [(m["name"], m["version"], m["status"], m["backend"]) for m in snap["models"]] == [
        ("demo", 1, "active", "eager")
    ]
    redis_traffic = snap["traffic"]["redis"]
    assert redis_traffic["rows"] == 40 and redis_traffic["statuses"] == {"ok": 40}
    assert redis_traffic["p50_ms"] is not None and redis_traffic["error_rate"] == 0
    kafka = snap["kafka"]
    assert kafka["topic"] == topic and len(kafka["partitions"]) == 3 and kafka["lag"] == 0
    assert screen.returncode == 0, screen.stderr
    for title in ("redis", "celery workers", "versions", "last 15 minutes", "bulk runs"):
        assert title in screen.stdout
    secrets = [redis_url.split(":")[2].split("@")[0], kafka_env.get("SCORING_KAFKA_PASSWORD")]
    secrets.append(pg_url.split(":")[2].split("@")[0])
    for secret in filter(None, secrets):
        assert secret not in done.stdout + done.stderr + screen.stdout + screen.stderr
