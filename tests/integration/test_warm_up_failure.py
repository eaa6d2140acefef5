"""A worker whose active version cannot load or warm up exits non-zero at start, with the
reason and the fix, and never takes a message it could not score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from tests.helpers import demo_requests, run_scoring, worker_env, worker_process
from workers.runtime.artifacts import MANIFEST

pytestmark = pytest.mark.integration


def test_a_backend_that_cannot_run_here_stops_the_worker_before_it_consumes(
    redis_url: str, sqlite_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    artifact = tmp_path / "gpu-only"
    shutil.copytree(demo_artifact, artifact)
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["runtime"]["backend"] = "fp16"  # CUDA only: this machine scores on the CPU
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    settings = make_settings(broker={"url": redis_url})
    env = worker_env(redis_url, sqlite_url, settings)
    assert run_scoring("models", "register", "demo", str(artifact), env=env).returncode == 0
    RedisProducer(celery_app(settings.broker)).send(demo_requests(3), per_message=3)
    queue = settings.broker.requests_queue
    client = redis.Redis.from_url(redis_url)
    waiting = sum(client.llen(k) for k in client.keys(queue + "*"))
    try:
        proc = worker_process(env, "nogpu", tmp_path / "worker.log")
        assert proc.wait(120) == 1
        log = (tmp_path / "worker.log").read_text()
        assert "demo v1 (fp16) cannot load or warm up here" in log, log
        assert "needs a CUDA GPU" in log and "scoring models validate demo 1" in log
        assert sum(client.llen(k) for k in client.keys(queue + "*")) == waiting  # untouched
    finally:
        client.delete(*client.keys(queue + "*"))
