"""Bulk inputs as nightly jobs have them: a hive-partitioned Parquet dataset (a directory
or a glob), and a query streamed from a database, each scored once per row by a real
worker, and resumable."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from schemas.db import make_engine
from tests.helpers import run_scoring, summary
from tests.integration.test_bulk_resume import env, results, scalar, worker  # noqa: F401
from workers.runtime.models.demo.build import write_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def partitioned(tmp_path: Path, rows: int) -> Path:
    """The demo rows as a dataset partitioned by label (label=benign/…/part-N.parquet)."""
    table = pcsv.read_csv(write_csv(tmp_path / "rows.csv", rows, seed=8))
    root = tmp_path / "nightly"
    for label in table.column("label").unique().to_pylist():
        part = table.filter(pa.compute.equal(table.column("label"), label)).drop(["label"])
        (root / f"label={label}").mkdir(parents=True)
        for i, start in enumerate(range(0, part.num_rows, 300)):
            pq.write_table(part.slice(start, 300), root / f"label={label}" / f"part-{i}.parquet")
    return root


@pytest.mark.parametrize("spec", ["directory", "glob"])
def test_a_partitioned_parquet_dataset_with_its_partition_as_the_label(
    env: dict[str, str],  # noqa: F811
    pg_url: str,
    tmp_path: Path,
    spec: str,
) -> None:
    rows = 1_500
    root = partitioned(tmp_path, rows)
    where = str(root) if spec == "directory" else f"{root}/*/part-*.parquet"
    with worker(env, tmp_path / "worker.log"):
        done = run_scoring(
            "bulk", where, "--model", "demo", "--id-column", "id", "--label-column", "label",
            "--wait", env=env, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    table = summary(done.stdout)
    assert (table["enqueued"], table["ok"], table["lost"]) == (str(rows), str(rows), "0")
    assert float(table["accuracy"].rstrip("%")) > 80  # the labels came from the partitions
    assert results(pg_url) == (rows, rows)


def test_a_query_streamed_from_a_database(
    env: dict[str, str],  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    rows = 2_000
    table = pcsv.read_csv(write_csv(tmp_path / "rows.csv", rows, seed=9))
    engine = make_engine(pg_url)
    names = [n for n in table.column_names if n not in ("id", "label")]
    with engine.begin() as conn:
        cols = ", ".join(f'"{n}" double precision' for n in names)
        conn.execute(text(f"CREATE TABLE nightly (id text PRIMARY KEY, label text, {cols})"))
        params = ", ".join(f":p{i}" for i in range(len(names)))
        conn.execute(
            text(f"INSERT INTO nightly VALUES (:id, :label, {params})"),
            [
                {"id": r["id"], "label": r["label"], **{f"p{i}": r[n] for i, n in enumerate(names)}}
                for r in table.to_pylist()
            ],
        )
    engine.dispose()
    query = "SELECT * FROM nightly ORDER BY id"
    with worker(env, tmp_path / "worker.log"):
        done = run_scoring(
            "bulk", "--sql", query, "--from", pg_url, "--model", "demo", "--id-column", "id",
            "--label-column", "label", "--chunk-size", "128", "--wait", env=env, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    table_out = summary(done.stdout)
    assert (table_out["enqueued"], table_out["ok"], table_out["lost"]) == (str(rows),) * 2 + ("0",)
    assert results(pg_url) == (rows, rows)
    recorded = str(scalar(pg_url, "SELECT input FROM bulk_runs"))
    assert recorded == f"sql: {query}"  # the URL (and its password) is not recorded
    run_id = str(scalar(pg_url, "SELECT id FROM bulk_runs"))
    again = run_scoring("bulk", "--resume", run_id, env=env)
    assert again.returncode == 2 and "--from URL" in again.stderr
