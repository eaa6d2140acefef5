"""A bulk file through real Redis and a real Celery worker process into real PostgreSQL."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas.db import make_engine
from tests.helpers import count_results, run_scoring, summary, worker_env
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def scoring(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_scoring(*args, env=env, timeout=300)


@pytest.fixture
def stack(
    redis_url: str, pg_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> Iterator[dict[str, str]]:
    """Registered demo model v1 and a `scoring worker` process consuming this test's queue."""
    env = worker_env(redis_url, pg_url, make_settings())
    registered = scoring(env, "models", "register", "demo", str(demo_artifact))
    assert registered.returncode == 0, registered.stderr
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield env
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_ten_thousand_rows_once_each_and_again_writes_nothing(
    stack, tmp_path: Path, pg_url: str
) -> None:
    data = write_csv(tmp_path / "rows.csv", 10_000, seed=3)
    first = scoring(
        stack,
        "bulk",
        str(data),
        "--model",
        "demo",
        "--id-column",
        "id",
        "--label-column",
        "label",
        "--wait",
    )
    assert first.returncode == 0, first.stderr + first.stdout
    table = summary(first.stdout)
    assert (table["enqueued"], table["ok"], table["lost"], table["duplicates"]) == (
        "10000",
        "10000",
        "0",
        "0",
    )
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        rows, distinct, versions, hashes = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT request_id), count(DISTINCT model_version), "
                "count(DISTINCT artifact_sha256) FROM score_results"
            )
        ).one()
        sha = conn.execute(text("SELECT artifact_sha256 FROM model_versions")).scalar_one()
    assert (rows, distinct, versions, hashes) == (10_000, 10_000, 1, 1)
    assert count_results(engine, model_version=1, artifact_sha256=sha, status="ok") == 10_000

    again = scoring(stack, "bulk", str(data), "--model", "demo", "--id-column", "id", "--wait")
    assert again.returncode == 0, again.stderr + again.stdout
    assert count_results(engine) == 10_000
    with engine.connect() as conn:
        dupes = conn.execute(text("SELECT count(*) FROM bulk_duplicates")).scalar_one()
    assert dupes == 10_000


def test_bad_rows_get_invalid_results_and_the_run_completes(
    stack, tmp_path: Path, pg_url: str
) -> None:
    data = write_csv(tmp_path / "rows.csv", 1000, seed=4)
    lines = list(csv.reader(data.open()))
    header, body = lines[0], lines[1:]
    col = 1  # the first feature column
    body[10][col] = ""  # missing
    body[20][col] = "twelve"  # wrong type
    body[30][col] = "nan"  # NaN
    body[40][col] = "inf"  # infinity
    body[50][col] = "9" * 20_000  # over-long value
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    done = scoring(stack, "bulk", str(data), "--model", "demo", "--id-column", "id", "--wait")
    assert done.returncode == 0, done.stderr + done.stdout
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        invalid = dict(
            conn.execute(
                text("SELECT request_id, error FROM score_results WHERE status = 'invalid'")
            ).all()
        )
    assert count_results(engine) == 1000
    assert count_results(engine, status="ok") == 995
    field = header[col]
    assert invalid == {
        "row-10": f"{field}: missing",
        "row-20": f"{field}: expected float, got str 'twelve'",
        "row-30": f"{field}: not a finite number (nan)",
        "row-40": f"{field}: not a finite number (inf)",
        "row-50": f"{field}: value too long (20000 chars, at most 10000)",
    }
