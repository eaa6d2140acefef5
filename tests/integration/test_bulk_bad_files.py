"""A dirty CSV (byte order mark, mixed line endings, a newline in a quoted label, an id
twice within a chunk and once across chunks, a value that is no number, a ragged line)
through `scoring bulk --wait`, real Redis, a real worker process and PostgreSQL: every row
of the file is a result, a rejected row or a duplicate id, and none is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_scoring, summary
from tests.integration.test_bulk_resume import env, scalar, worker  # noqa: F401
from tests.producers.test_bulk_bad_files import dirty_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_dirty_csv_is_accounted_for_row_by_row(
    env: dict[str, str],  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    data, expected = dirty_csv(tmp_path / "dirty.csv", rows=1_000)
    with worker(env, tmp_path / "worker.log"):
        done = run_scoring(
            "bulk", str(data), "--model", "demo", "--id-column", "id", "--label-column", "label",
            "--chunk-size", "128", "--wait", env=env, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "1 rejected, 2 duplicate ids (each id scored once)" in done.stdout
    assert "row 6: duplicate id 'row-2'" in done.stderr and "Traceback" not in done.stderr
    table = summary(done.stdout)
    counted = {k: int(table[k.replace("_", " ")]) for k in expected if k != "rows"}
    assert counted == {k: v for k, v in expected.items() if k != "rows"}
    results = int(str(scalar(pg_url, "SELECT count(*) FROM score_results")))
    distinct = int(str(scalar(pg_url, "SELECT count(DISTINCT request_id) FROM score_results")))
    total, enqueued, rejected = (
        int(str(scalar(pg_url, f"SELECT {column} FROM bulk_runs")))  # nosec B608: our names
        for column in ("total_rows", "enqueued_rows", "rejected_rows")
    )
    status = scalar(pg_url, "SELECT status FROM bulk_runs")
    assert (results, distinct, enqueued, status) == (1_000, 1_000, 1_000, "done")
    # rows in the file = results + rejected + duplicate ids + duplicates of earlier runs
    rows_in = expected["rows"]
    assert total == rows_in == results + rejected + counted["duplicate_ids"] + counted["duplicates"]
    assert counted["lost"] == 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log and "IntegrityError" not in log
