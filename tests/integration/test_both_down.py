"""The database down and the broker refusing writes at the same time: a batch that can be
neither stored nor re-published is not acknowledged; once both are back every row is
stored exactly once and nothing is dead-lettered."""

from __future__ import annotations

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
from tests.tcp_proxy import proxy_for
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis", {"scoring": "both-down-test-pw"})
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_nothing_is_acknowledged_that_was_neither_stored_nor_sent_back(
    own_redis: RedisServer, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    env = worker_env(
        own_redis.url(),
        pg_url,
        make_settings(),
        SCORING_VISIBILITY_TIMEOUT_S="5",
        SCORING_DB_RETRIES="1",
        SCORING_DB_RETRY_BACKOFF_S="0.1",
    )
    assert run_scoring("models", "register", "demo", str(demo_artifact), env=env).returncode == 0
    data = write_csv(tmp_path / "rows.csv", 20_000, seed=8)
    sent = run_scoring("bulk", str(data), "--model", "demo", "--chunk-size", "64", env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    engine = make_engine(pg_url)
    broker = own_redis.client()
    with proxy_for(pg_url) as proxy:
        worker = worker_process(
            {**env, "SCORING_DATABASE_URL": proxy.url_for(pg_url)}, "bothdown", tmp_path / "w.log"
        )
        try:
            wait_for(lambda: count_results(engine) >= 2_000, timeout=180, every=0.05)
            broker.config_set("maxmemory", "1")  # writes refused (noeviction), acks allowed
            proxy.cut()
            wait_for(lambda: "stays unacknowledged" in (tmp_path / "w.log").read_text(), 60)
            time.sleep(3)
            broker.config_set("maxmemory", "0")
            proxy.restore()
            wait_for(lambda: count_results(engine) >= 20_000, timeout=240, every=0.5)
        finally:
            worker.terminate()
            worker.wait(60)
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT request_id) FROM score_results")
        ).one()
    assert (rows, distinct) == (20_000, 20_000)
    queue = env["SCORING_REQUESTS_QUEUE"]
    assert broker.llen(env["SCORING_DEAD_LETTER_QUEUE"]) == 0
    assert sum(broker.llen(k) for k in broker.keys(queue + "*")) == 0
    assert broker.hlen("unacked") == 0
