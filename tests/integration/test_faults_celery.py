"""Faults on the Redis path, with real processes: a worker killed mid-run and a database
outage mid-run. Each ends with exactly one result per row and nothing dead-lettered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from bench.fleet import stop_processes
from schemas.db import make_engine
from tests.helpers import count_results, run_scoring, wait_for, worker_env, worker_process
from tests.tcp_proxy import proxy_for
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Workers:
    """Worker processes (as `scoring worker` starts them) on one test's queue, each with its
    own log."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        self.procs[name] = worker_process(self.env, name, self.logs / f"{name}.log", **extra)
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        stop_processes(self.procs.values())


@pytest.fixture
def stack(
    redis_url: str, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> Iterator[tuple[dict[str, str], Workers]]:
    s = make_settings()
    # A dead worker's unacknowledged messages come back after 5 s, not 10 minutes.
    env = worker_env(
        redis_url,
        pg_url,
        s,
        SCORING_VISIBILITY_TIMEOUT_S="5",
        SCORING_DB_RETRY_BACKOFF_S="0.05",
    )
    registered = run_scoring("models", "register", "demo", str(demo_artifact), env=env)
    assert registered.returncode == 0, registered.stderr
    workers = Workers(env, tmp_path)
    try:
        yield env, workers
    finally:
        workers.stop_all()
        client = redis.Redis.from_url(redis_url)
        client.delete(s.broker.requests_queue, s.broker.dead_letter_queue)


@contextmanager
def sending(env: dict[str, str], data: Path) -> Iterator[None]:
    """`scoring bulk DATA` running in the background: the fault lands while rows still
    arrive; on the way out it must have enqueued everything and exited 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "bulk", str(data), "--model", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield
    finally:
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out


def ready(workers: Workers, *names: str) -> None:
    wait_for(lambda: all("warmed up" in workers.log(n) for n in names), timeout=120, every=0.2)


def totals(pg_url: str) -> tuple[Any, ...]:
    with make_engine(pg_url).connect() as conn:
        return tuple(
            conn.execute(
                text("SELECT count(*), count(DISTINCT request_id) FROM score_results")
            ).one()
        )


def all_stored(engine: Any, env: dict[str, str], rows: int = 40_000) -> None:
    """Wait for every row's result; on time-out say where the rest are."""
    try:
        wait_for(lambda: count_results(engine) >= rows, timeout=180, every=0.5)
    except AssertionError:
        client = redis.Redis.from_url(env["SCORING_BROKER_URL"])
        queued = sum(client.llen(k) for k in client.keys(env["SCORING_REQUESTS_QUEUE"] + "*"))
        raise AssertionError(
            f"{count_results(engine)} of {rows} stored; {queued} messages queued, "
            f"{client.hlen('unacked')} unacknowledged, {dead_letters(env)} dead letters"
        ) from None


def dead_letters(env: dict[str, str]) -> int:
    return int(
        redis.Redis.from_url(env["SCORING_BROKER_URL"]).llen(env["SCORING_DEAD_LETTER_QUEUE"])
    )


def nothing_left(env: dict[str, str]) -> bool:
    """No message of this test's queue is queued or recorded as unacknowledged."""
    client = redis.Redis.from_url(env["SCORING_BROKER_URL"])
    queue = env["SCORING_REQUESTS_QUEUE"]
    queued = sum(client.llen(k) for k in client.keys(queue + "*"))
    held = sum(queue.encode() in raw for raw in client.hvals("unacked"))
    return queued == 0 and held == 0


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
    stack, tmp_path: Path, pg_url: str
) -> None:
    """Every message the killed worker held (fetched, buffered, or being scored) comes back
    once its lease expires and the other worker scores it: exactly one result per row."""
    env, workers = stack
    workers.start("a")
    workers.start("b")
    ready(workers, "a", "b")
    engine = make_engine(pg_url)
    with sending(env, write_csv(tmp_path / "rows.csv", 40_000, seed=5)):
        wait_for(lambda: count_results(engine) >= 1_000, timeout=120, every=0.02)
        workers.procs["a"].send_signal(signal.SIGKILL)
        workers.procs["a"].wait(30)
        killed_at = count_results(engine)
    all_stored(engine, env)
    assert killed_at < 40_000
    assert totals(pg_url) == (40_000, 40_000)  # nothing lost, nothing doubled
    with engine.connect() as conn:
        by_worker = dict(
            conn.execute(text("SELECT worker, count(*) FROM score_results GROUP BY 1")).all()
        )
    assert len(by_worker) == 2 and all(by_worker.values()), by_worker
    # Messages worker a stored but never acknowledged come back after the visibility
    # timeout, possibly after the last row was stored: b scores them again and the sink
    # keeps one row each. Wait for that, then count again.
    wait_for(lambda: nothing_left(env), timeout=60, every=0.5)
    assert totals(pg_url) == (40_000, 40_000)
    assert dead_letters(env) == 0


def test_a_database_outage_mid_run_loses_and_doubles_nothing(
    stack, tmp_path: Path, pg_url: str
) -> None:
    """The worker reaches PostgreSQL through a proxy cut for 6 s: refused batches are
    re-queued with an attempt count and stored once the database is back."""
    env, workers = stack
    with proxy_for(pg_url) as proxy:
        workers.start("w", SCORING_DATABASE_URL=proxy.url_for(pg_url))
        ready(workers, "w")
        engine = make_engine(pg_url)
        with sending(env, write_csv(tmp_path / "rows.csv", 40_000, seed=6)):
            wait_for(lambda: count_results(engine) >= 1_000, timeout=120, every=0.02)
            proxy.cut()
            cut_at = count_results(engine)
            time.sleep(6)
            assert count_results(engine) == cut_at  # nothing got through while it was down
            proxy.restore()
        all_stored(engine, env)
    assert cut_at < 40_000
    assert totals(pg_url) == (40_000, 40_000)
    assert "re-queued" in workers.log("w") and "failed unexpectedly" not in workers.log("w")
    assert dead_letters(env) == 0
