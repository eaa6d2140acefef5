"""Redis keeps what it was given: restarted mid-run (SIGTERM, then started again on the
same append-only file), the workers resume within 30 s, measured by results arriving,
and every row is scored exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from deploy.services.redis_server import RedisServer
from schemas.db import make_engine
from tests.helpers import (
    count_results,
    free_port,
    run_scoring,
    wait_for,
    worker_env,
    worker_process,
)
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (it is restarted), configured as `make services` runs it."""
    server = RedisServer(
        port=free_port(), directory=tmp_path / "redis", users={"scoring": "s3cret-test-pw"}
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_a_redis_restart_mid_run_loses_nothing_and_workers_resume(
    own_redis: RedisServer, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    config = own_redis.client().config_get("*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    env = worker_env(own_redis.url(), pg_url, make_settings(), SCORING_VISIBILITY_TIMEOUT_S="5")
    assert run_scoring("models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    data = write_csv(tmp_path / "rows.csv", 40_000, seed=7)
    sent = run_scoring("bulk", str(data), "--model", "demo", "--chunk-size", "64", env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    engine = make_engine(pg_url)
    worker = worker_process(env, "restart", tmp_path / "worker.log")
    try:
        wait_for(lambda: count_results(engine) >= 4_000, timeout=180, every=0.05)
        own_redis.stop()  # SIGTERM: Redis writes out its append-only file and exits
        during = count_results(engine)
        time.sleep(3)
        own_redis.start()
        restarted = time.monotonic()
        wait_for(lambda: count_results(engine) > during + 500, timeout=60, every=0.2)
        resumed_s = time.monotonic() - restarted
        wait_for(lambda: count_results(engine) >= 40_000, timeout=240, every=0.5)
    finally:
        worker.terminate()
        worker.wait(60)
    assert resumed_s < 30, f"results resumed {resumed_s:.1f}s after Redis came back"
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT request_id) FROM score_results")
        ).one()
    assert (rows, distinct) == (40_000, 40_000)
    client = own_redis.client()
    queue = env["SCORING_REQUESTS_QUEUE"]
    assert sum(client.llen(k) for k in client.keys(queue + "*")) == 0
    assert client.hlen("unacked") == 0


def test_the_local_redis_refuses_the_default_user() -> None:
    """`make services` starts Redis with `default` switched off: no password, no access."""
    from deploy import services

    server = services.redis()
    assert server.answers()
    done = subprocess.run(
        [sys.executable, "-c", f"import redis; redis.Redis(port={server.port}).ping()"],
        capture_output=True,
        text=True,
    )
    said = done.stderr + done.stdout
    assert done.returncode != 0 and ("NOAUTH" in said or "authenticated" in said), said
