"""Bulk runs that survive the night: a producer SIGKILLed half-way is resumed from its
ledger, and a chunk lost from Redis after it was published is published again by
`--wait`. Each counts rows in the file, results out and duplicates, on real Redis and
PostgreSQL with a real worker process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from schemas.db import make_engine
from tests.helpers import run_scoring, summary, wait_for, worker_env
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(redis_url: str, pg_url: str, make_settings, demo_artifact: Path) -> dict[str, str]:
    env = worker_env(redis_url, pg_url, make_settings(), SCORING_BULK_LEASE_S="3")
    registered = run_scoring("models", "register", "demo", str(demo_artifact), env=env)
    assert registered.returncode == 0, registered.stderr
    return env


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def scalar(pg_url: str, sql: str, **params: object) -> object:
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def results(pg_url: str) -> tuple[object, ...]:
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            return tuple(
                conn.execute(
                    text("SELECT count(*), count(DISTINCT request_id) FROM score_results")
                ).one()
            )
    finally:
        engine.dispose()


def test_a_producer_killed_half_way_is_resumed_and_every_row_is_scored_once(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    rows = 60_000
    data = write_csv(tmp_path / "rows.csv", rows, seed=5)
    args = ["bulk", str(data), "--model", "demo", "--chunk-size", "32"]  # default ids
    producer = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (scalar(pg_url, "SELECT count(*) FROM bulk_chunks") or 0) >= 100,
            timeout=120,
            every=0.02,
        )
    finally:
        os.kill(producer.pid, signal.SIGKILL)
        producer.wait()
    run_id = str(scalar(pg_url, "SELECT id FROM bulk_runs"))
    assert scalar(pg_url, "SELECT status FROM bulk_runs") == "enqueuing"
    recorded = int(scalar(pg_url, "SELECT count(*) FROM bulk_chunks") or 0)  # type: ignore[call-overload]
    assert 0 < recorded < rows // 32, "the producer was not killed half-way"

    with worker(env, tmp_path / "worker.log"):
        resumed = run_scoring("bulk", "--resume", run_id, "--wait", env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    table = summary(resumed.stdout)
    assert (table["enqueued"], table["ok"], table["lost"], table["duplicates"]) == (
        str(rows),
        str(rows),
        "0",
        "0",
    )
    assert results(pg_url) == (rows, rows)
    assert scalar(pg_url, "SELECT count(*) FROM bulk_chunks") == rows // 32 + (rows % 32 > 0)
    assert scalar(pg_url, "SELECT count(*) FROM bulk_duplicates") == 0
    assert scalar(pg_url, "SELECT status FROM bulk_runs") == "done"

    again = run_scoring("bulk", "--resume", run_id, env=env)
    assert again.returncode == 2 and "is done: nothing to resume" in again.stderr


def test_a_chunk_lost_from_redis_is_published_again_and_the_run_completes_once(
    env: dict[str, str], redis_url: str, pg_url: str, tmp_path: Path
) -> None:
    rows = 2_000
    data = write_csv(tmp_path / "rows.csv", rows, seed=6)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "bulk", str(data), "--model", "demo"]
        + ["--chunk-size", "100", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: scalar(pg_url, "SELECT status FROM bulk_runs") == "running", timeout=60)
        client = redis.Redis.from_url(redis_url)
        queue = env["SCORING_REQUESTS_QUEUE"]
        lists = [k for k in client.scan_iter(match=f"{queue}*") if client.type(k) == b"list"]
        lost = next(client.lpop(k) for k in lists if client.llen(k))
        assert lost is not None
        assert sum(client.llen(k) for k in lists) == rows // 100 - 1
        with worker(env, tmp_path / "worker.log"):
            out, err = waiting.communicate(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err + out
    table = summary(out)
    assert (table["enqueued"], table["ok"], table["lost"], table["duplicates"]) == (
        str(rows),
        str(rows),
        "0",
        "0",
    )
    assert results(pg_url) == (rows, rows)
    assert scalar(pg_url, "SELECT sum(republished) FROM bulk_chunks") == 1
    # The warning names the chunk and the input rows it holds, from the ledger.
    said = re.search(r"1 incomplete chunks again: chunk (\d+) \(input rows (\d+)-(\d+)\)", err)
    assert said is not None, err
    seq = int(said[1])
    assert (int(said[2]), int(said[3])) == (seq * 100 + 1, seq * 100 + 100)
    assert scalar(pg_url, "SELECT seq FROM bulk_chunks WHERE republished = 1") == seq


def test_resume_refuses_a_file_that_changed(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "rows.csv", 300, seed=7)
    first = run_scoring("bulk", str(data), "--model", "demo", env=env)
    assert first.returncode == 0, first.stderr
    run_id = str(scalar(pg_url, "SELECT id FROM bulk_runs"))
    data.write_text(data.read_text().replace("\n", "\r\n", 1))
    refused = run_scoring("bulk", "--resume", run_id, env=env)
    assert refused.returncode == 2
    assert "changed since the run started" in refused.stderr
    assert run_scoring("bulk", "--resume", "nope", env=env).stderr.count("no bulk run") == 1
