"""Bad bulk files get a clear error and a recorded reason, never a crash or a silent loss:
truncated or corrupt Parquet, a CSV with a byte order mark, mixed line endings (and a
newline inside a quoted field), ids that repeat within a chunk and across chunks, empty
and header-only files, JSON lines with a broken line or bytes that are not UTF-8.

The reading layer and the run's record are tested on SQLite without servers; rows are
scored by the worker's pipeline from what a fake broker was handed (as the Celery task
would hand them over), so that every count of a run is read back from its database."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from producers import bulk, bulk_messages
from producers.file_readers import iter_rows
from producers.run_summary import summarize
from schemas import names
from schemas.chunks import LABEL_COLUMN, REQUEST_ID_COLUMN, encode_chunk
from schemas.db import make_engine, session_scope
from schemas.tables import BulkChunk, BulkRun, ModelVersion, ScoreResult, utcnow
from workers.core.chunks import RowChunk
from workers.runtime.models.demo.build import write_csv
from workers.sources.base import WorkItem

FEW = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def model(schema: dict[str, str]) -> ModelVersion:
    """A version's record as the reading layer needs it (nothing is scored with it)."""
    return ModelVersion(
        name="small",
        version=1,
        architecture="none",
        artifact_uri="-",
        artifact_sha256="0" * 64,
        input_schema=schema,
    )


SMALL = model({"a": "float", "b": "float"})
ENDINGS = ["\r\n", "\n", "\r"]


class Broker:
    """Stands in for RedisProducer: keeps the WorkItems a worker makes of each message."""

    def __init__(self) -> None:
        self.items: list[WorkItem] = []

    def __call__(self, app: Any, **options: Any) -> Broker:  # RedisProducer(app, retry_policy=…)
        return self

    def send(self, requests: Any, *, bulk_run_id: Any, bulk_chunk: Any, **_: Any) -> int:
        requests = list(requests)
        self.items += [
            WorkItem(r, names.SOURCE_BULK, utcnow(), bulk_run_id, bulk_chunk=bulk_chunk)
            for r in requests
        ]
        return len(requests)

    def send_chunk(
        self, rows: pa.RecordBatch, *, bulk_run_id: Any, bulk_chunk: Any, **kw: Any
    ) -> int:
        message = {"chunk": encode_chunk(rows), "deadline_ms": None}
        chunk = RowChunk.from_message({**message, **kw})
        self.items.append(
            WorkItem(
                chunk,
                names.SOURCE_BULK,
                utcnow(),
                bulk_run_id,
                size=chunk.size,
                bulk_chunk=bulk_chunk,
            )
        )
        return rows.num_rows

    def rows(self) -> int:
        return sum(i.size for i in self.items)


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    fake = Broker()
    monkeypatch.setattr(bulk, "RedisProducer", fake)
    return fake


def run_of(engine: Any, run_id: str) -> BulkRun:
    with session_scope(engine) as session:
        run = session.get(BulkRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def failed_run(engine: Any, path: Path) -> BulkRun:
    with session_scope(engine) as session:
        run = session.exec(select(BulkRun).where(BulkRun.input == str(path))).one()
        session.expunge(run)
        return run


def published(found: list[Any]) -> list[tuple[Any, ...]]:
    """(request id, inputs, label) of every row of the messages, whichever path they took."""
    out: list[tuple[Any, ...]] = []
    for message in found:
        if isinstance(message, pa.RecordBatch):
            for row in message.to_pylist():
                inputs = {
                    k: v for k, v in row.items() if k not in (REQUEST_ID_COLUMN, LABEL_COLUMN)
                }
                out.append((row[REQUEST_ID_COLUMN], inputs, row.get(LABEL_COLUMN)))
        else:
            out += [
                (r["request_id"], r["inputs"], (r.get("metadata") or {}).get("label"))
                for r in message
            ]
    return out


def read(path: Path, record: ModelVersion = SMALL, chunk_size: int = 4, **options: Any) -> tuple:
    """What the producer would publish from `path`: (rows, rejections, duplicates)."""
    rejections: list[str] = []
    duplicates: list[str] = []
    opts = bulk.BulkOptions(chunk_size=chunk_size, **options)
    found = list(bulk_messages.messages(path, record, opts, "run1", rejections, duplicates))
    return published(found), rejections, duplicates


def small_rows(n: int, seed: int = 0, newline_labels: bool = False) -> list[list[str]]:
    rng = random.Random(seed)
    rows = [["id", "a", "b", "label"]]
    for i in range(n):
        label = rng.choice(["benign", "malignant"])
        if newline_labels and i % 3 == 1:
            label += rng.choice(["\nsecond line", "\r\nsecond line"])
        rows.append([f"r-{i}", f"{rng.uniform(-5, 5):.4f}", str(rng.randint(0, 9)), label])
    return rows


def csv_text(rows: list[list[str]], endings: Iterator[str] | None = None, bom: bool = False) -> str:
    """Rows as CSV lines, each ended by the next of `endings` (\\n throughout without)."""
    lines = []
    for row in rows:
        buffer = io.StringIO()  # \r\n as the terminator, so that a field with \r or \n is quoted
        csv.writer(buffer, lineterminator="\r\n").writerow(row)
        lines.append(buffer.getvalue()[:-2] + (next(endings) if endings else "\n"))
    return ("\ufeff" if bom else "") + "".join(lines)


# --- truncated and corrupt Parquet -------------------------------------------------------


@pytest.fixture
def engine(sqlite_url: str) -> Any:
    return make_engine(sqlite_url)


@pytest.fixture(scope="module")
def small_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 rows in 6 row groups."""
    header, *rows = small_rows(3000, seed=1)
    columns = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    types = {"id": pa.string(), "a": pa.float64(), "b": pa.int64(), "label": pa.string()}
    table = pa.table({n: pa.array(v).cast(types[n]) for n, v in columns.items()})
    path = tmp_path_factory.mktemp("pq") / "good.parquet"
    pq.write_table(table, path, row_group_size=500)
    return path


def unique(folder: Path, name: str) -> Path:
    """A file name of its own per hypothesis example (they share the test's tmp_path)."""
    return folder / f"{os.urandom(4).hex()}-{name}"


def assert_failed_cleanly(exc: bulk.UnreadableInput, path: Path, engine: Any, sent: int) -> BulkRun:
    message = str(exc)
    assert message.startswith(f"{path}: corrupt or truncated Parquet (")
    assert "\n" not in message and message.isprintable()
    run = failed_run(engine, path)
    assert run.status == names.RUN_FAILED and run.error == message
    assert run.enqueued_rows == sent and f"run {run.id} failed" in message
    return run


@FEW
@given(cut=st.floats(0, 1, exclude_max=True))
@example(cut=0.0)
@example(cut=0.999)
def test_a_parquet_file_cut_anywhere_fails_its_run_with_one_line(
    cut: float, small_parquet: Path, tmp_path: Path, engine: Any, broker: Broker
) -> None:
    data = small_parquet.read_bytes()
    offset = int(len(data) * cut)
    path = unique(tmp_path, f"cut-at-{offset}.parquet")
    path.write_bytes(data[:offset])
    with pytest.raises(bulk.UnreadableInput) as caught:
        bulk.enqueue_file(None, engine, path, SMALL, bulk.BulkOptions(chunk_size=64))
    assert_failed_cleanly(caught.value, path, engine, sent=0)
    assert str(caught.value).endswith("failed with nothing published") and not broker.items


@FEW
@given(data=st.binary(max_size=4096))
def test_random_bytes_named_parquet_fail_their_run(
    data: bytes, tmp_path: Path, engine: Any, broker: Broker
) -> None:
    path = unique(tmp_path, "random.parquet")
    path.write_bytes(data)
    with pytest.raises(bulk.UnreadableInput) as caught:
        bulk.enqueue_file(None, engine, path, SMALL, bulk.BulkOptions(chunk_size=64))
    assert_failed_cleanly(caught.value, path, engine, sent=0)
    assert not broker.items


def corrupt_last_row_group(good: Path, out: Path, checksum: bool = False) -> Path:
    """`good` with bytes of its last row group's first data page overwritten; the footer
    is intact, so the rows before it read."""
    data = bytearray(good.read_bytes())
    metadata = pq.ParquetFile(good).metadata
    column = metadata.row_group(metadata.num_row_groups - 1).column(1)
    if checksum:  # one bit in the page's values: only its CRC can tell
        data[column.data_page_offset + column.total_compressed_size - 5] ^= 0x01
    else:  # its page header
        start = column.data_page_offset
        data[start : start + 16] = b"\xff" * 16
    out.write_bytes(data)
    return out


@pytest.fixture(scope="module")
def many_row_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 demo rows in 12 row groups; the last one's page header is broken."""
    folder = tmp_path_factory.mktemp("groups")
    table = pcsv.read_csv(write_csv(folder / "rows.csv", 12_000, seed=5))
    pq.write_table(table, folder / "good.parquet", row_group_size=1000)
    return corrupt_last_row_group(folder / "good.parquet", folder / "cut-in-the-last.parquet")


def test_a_file_corrupt_in_its_last_row_group_says_what_was_published(
    many_row_groups: Path, demo_pipeline: Any, broker: Broker
) -> None:
    engine, pipeline, dead, record = demo_pipeline
    options = bulk.BulkOptions(chunk_size=256, id_column="id")
    with pytest.raises(bulk.UnreadableInput) as caught:
        bulk.enqueue_file(None, engine, many_row_groups, record, options)
    sent = broker.rows()
    assert 0 < sent < 12_000
    run = assert_failed_cleanly(caught.value, many_row_groups, engine, sent)
    error = str(run.error)
    assert f"after publishing {sent} rows ({run.chunks} chunks), which will be scored" in error
    assert "--resume cannot fix a corrupt input" in error
    pipeline.process(broker.items)
    summary = summarize(engine, run.id)
    assert (summary.ok, summary.lost, len(dead)) == (sent, 0, 0)  # what went out is scored

    broker.items.clear()
    with pytest.raises(bulk.UnreadableInput, match="corrupt or truncated Parquet"):
        bulk.resume(None, engine, run.id)  # the same corrupt bytes: the same failure
    assert broker.items == [] and run_of(engine, run.id).status == names.RUN_FAILED


def test_a_flipped_bit_in_a_checksummed_page_fails_instead_of_scoring_a_wrong_value(
    tmp_path: Path, engine: Any, broker: Broker
) -> None:
    table = pcsv.read_csv(write_csv(tmp_path / "rows.csv", 2000, seed=6))
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, row_group_size=500, write_page_checksum=True, compression="none")
    path = corrupt_last_row_group(good, tmp_path / "flipped.parquet", checksum=True)
    schema = {n: "float" for n in table.column_names if n not in ("id", "label")}
    record = model(schema)
    with pytest.raises(bulk.UnreadableInput, match="CRC checksum verification failed"):
        bulk.enqueue_file(None, engine, path, record, bulk.BulkOptions(chunk_size=256))


@pytest.mark.slow
def test_scoring_bulk_on_a_corrupt_parquet_exits_1_with_one_line(
    many_row_groups: Path, tmp_path: Path, demo_artifact: Path
) -> None:
    from schemas.db import upgrade
    from workers.runtime import registry

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    registry.register(make_engine(url), tmp_path / "store", "demo", demo_artifact)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_DATABASE_URL": url,
        "SCORING_MODEL_STORE": str(tmp_path / "store"),
        "SCORING_BROKER_URL": "memory://localhost/",
    }
    done = subprocess.run(
        [sys.executable, "-m", "scoring.cli", "bulk", str(many_row_groups), "--model", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == names.EXIT_CHECK_FAILED, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {many_row_groups}: corrupt or truncated")
    assert "rows (" in line and "--resume cannot fix a corrupt input" in line
    with session_scope(make_engine(url)) as session:
        (run,) = session.exec(select(BulkRun)).all()
        assert run.status == names.RUN_FAILED and run.enqueued_rows > 0
        assert run.error is not None and run.error in line


# --- a byte order mark, mixed line endings, newlines in quoted fields ---------------------


@FEW
@given(
    endings=st.lists(st.sampled_from(ENDINGS), min_size=41, max_size=41),
    bom=st.booleans(),
    chunk_size=st.integers(1, 16),
)
@example(endings=["\r"] * 41, bom=True, chunk_size=4)
def test_bom_and_any_mix_of_line_endings_read_every_row_once(
    endings: list[str], bom: bool, chunk_size: int, tmp_path: Path
) -> None:
    rows = small_rows(40, seed=2, newline_labels=True)
    clean = tmp_path / "clean.csv"
    clean.write_text(csv_text(rows), encoding="utf-8", newline="")
    messy = unique(tmp_path, "messy.csv")
    messy.write_text(csv_text(rows, iter(endings), bom), encoding="utf-8", newline="")
    every: list[dict[str, Any]] = [{"id_column": "id", "label_column": "label"}, {}]
    for options in every:
        expected = read(clean, chunk_size=chunk_size, **options)
        assert read(messy, chunk_size=chunk_size, **options) == expected
        assert len(expected[0]) == 40 and expected[1:] == ([], [])
    # the row reader too: the BOM is not part of the first column's name
    assert list(iter_rows(messy)) == list(iter_rows(clean))
    first = next(iter_rows(messy))
    assert list(first) == ["id", "a", "b", "label"] and first["id"] == "r-0"


def test_a_bom_changes_nothing_on_any_reader(tmp_path: Path) -> None:
    rows = small_rows(5)
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text(csv_text(rows))
    marked.write_text(csv_text(rows, bom=True))
    assert read(marked, id_column="id") == read(plain, id_column="id")
    assert [r[0] for r in read(marked, id_column="id")[0]] == [f"r-{i}" for i in range(5)]
    assert next(iter_rows(marked)) == next(iter_rows(plain))
    lines = tmp_path / "marked.jsonl"
    lines.write_text(
        "\ufeff" + "\n".join(json.dumps({"id": f"j{i}", "a": i, "b": 1}) for i in range(3))
    )
    found, rejections, _ = read(lines, id_column="id")
    assert [r[0] for r in found] == ["j0", "j1", "j2"] and rejections == []


# --- ids that repeat -------------------------------------------------------------------


@FEW
@given(
    picks=st.lists(st.integers(0, 29), min_size=0, max_size=12),
    chunk_size=st.integers(1, 12),
    bad_row=st.none() | st.integers(0, 29),
)
def test_a_repeated_id_is_scored_once_and_counted_with_its_row(
    picks: list[int], chunk_size: int, bad_row: int | None, tmp_path: Path
) -> None:
    """Copies of random rows anywhere (within a chunk, across chunks, on the column path
    or, with a value that is no number in the chunk, the row path): the first row with an
    id is published, every later one is a duplicate id with its row number."""
    rows = small_rows(30, seed=3)
    body = rows[1:]
    if bad_row is not None:
        body[bad_row][1] = "twelve"
    rng = random.Random(len(picks) * 31 + chunk_size)
    for pick in picks:
        body.insert(rng.randint(pick + 1, len(body)), list(body[pick]))
    path = unique(tmp_path, "dupes.csv")
    path.write_text(csv_text([rows[0], *body]))
    found, rejections, duplicates = read(path, chunk_size=chunk_size, id_column="id")
    ids = [r[0] for r in found]
    assert ids == [f"r-{i}" for i in range(30)] and rejections == []
    assert len(duplicates) == len(picks)
    numbers = [int(d.split(":")[0].removeprefix("row ")) for d in duplicates]
    assert [body[n - 1][0] for n in numbers] == [d.split("'")[1] for d in duplicates]
    assert all(
        body[n - 1][0] in [r[0] for r in body[: n - 1]] for n in numbers
    )  # each has an earlier row with its id


def test_the_same_rows_are_left_out_on_every_read(tmp_path: Path) -> None:
    """Resume and republish read the input again: a chunk's number must keep its rows."""
    rows = small_rows(20)
    body = rows[1:]
    path = tmp_path / "dupes.csv"
    changed = [body[2][0], "99.0", *body[2][2:]]  # the same id, another value
    path.write_text(csv_text([rows[0], *body[:10], changed, *body[10:], body[15]]))
    opts = bulk.BulkOptions(chunk_size=4, id_column="id")
    first = list(bulk_messages.messages(path, SMALL, opts, "run1", [], []))
    again = list(bulk_messages.messages(path, SMALL, opts, "run1", []))
    assert published(first) == published(again) and len(first) == len(again) == 6
    kept = {row[0]: row[1] for row in published(first)}
    assert kept[body[2][0]]["a"] == float(body[2][1])  # the first row with the id


# --- the whole run: counts that add up -----------------------------------------------------


def dirty_csv(path: Path, rows: int = 600) -> tuple[Path, dict[str, int]]:
    """Demo rows as a dirty export: a byte order mark, \\r\\n, \\n and lone \\r line ends,
    a label with a newline in its quotes, an id twice within a chunk of 128 and once
    across chunks (the copy with another value: the first row is scored), a value that
    is no number and a line with too few fields. Returns the file and its counts."""
    lines = list(csv.reader(write_csv(path, rows, seed=11).open(newline="")))
    header, body = lines[0], lines[1:]
    body[3][-1] = "benign\nchecked twice"
    body[300][1] = "twelve"
    copy = list(body[10])
    copy[1] = "0.0"
    body[5:5] = [list(body[2])]  # row-2 again, in the first chunk
    body.insert(450, copy)  # row-10 again, three chunks later
    body.insert(200, ["row-ragged", "1.0"])
    rng = random.Random(11)
    text = csv_text([header, *body], iter(lambda: rng.choice(ENDINGS), None), bom=True)
    path.write_text(text, encoding="utf-8", newline="")
    expected = {
        "rows": len(body),
        "enqueued": rows,
        "rejected": 1,
        "duplicate_ids": 2,
        "ok": rows - 1,
        "invalid": 1,
        "duplicates": 0,
        "lost": 0,
    }
    return path, expected


def test_a_dirty_csv_scores_each_row_once_and_accounts_for_the_rest(
    tmp_path: Path, demo_pipeline: Any, broker: Broker
) -> None:
    engine, pipeline, dead, record = demo_pipeline
    path, expected = dirty_csv(tmp_path / "dirty.csv")
    options = bulk.BulkOptions(chunk_size=128, id_column="id", label_column="label")
    run = bulk.enqueue_file(None, engine, path, record, options)
    pipeline.process(broker.items)
    summary = summarize(engine, run.id).as_dict()
    assert {k: summary[k] for k in expected if k != "rows"} == {
        k: v for k, v in expected.items() if k != "rows"
    }
    recorded = run_of(engine, run.id)
    assert recorded.total_rows == expected["rows"] and not dead
    # The ledger names the input rows of each chunk: in order, apart, within the input,
    # each chunk's requests fitting its span, the spans leaving out only refused rows.
    with session_scope(engine) as session:
        ledger = session.exec(select(BulkChunk).order_by(BulkChunk.seq)).all()
    spans = [(c.first_row or 0, c.last_row or 0, c.rows) for c in ledger]
    assert spans[0][0] == 1 and spans[-1][1] == expected["rows"] - expected["rejected"]
    assert all(f <= last and n <= last - f + 1 for f, last, n in spans)
    assert all(prev[1] < nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    assert (
        sum(last - f + 1 for f, last, _ in spans) - sum(n for *_, n in spans)
        == (expected["duplicate_ids"])
    )
    assert bulk.wait(engine, run.id, poll_s=0.01, stall_timeout_s=2)  # the run completes
    assert run_of(engine, run.id).status == names.RUN_DONE
    assert recorded.error is not None
    reasons = recorded.error.splitlines()
    # Arrow numbers CSV records (the header is 1), not physical lines: the quoted newline
    # of row-3 makes this record's physical line 203.
    assert reasons[0] == "line 202: 2 fields, expected 32"
    why = "(an earlier row has it; that row is scored, this one is not)"
    assert reasons[1:] == [
        f"row 6: duplicate id 'row-2' {why}",
        f"row 451: duplicate id 'row-10' {why}",  # the ragged line before it is no row
    ]
    with session_scope(engine) as session:
        invalid = session.exec(select(ScoreResult).where(ScoreResult.status == "invalid")).one()
        labelled = session.exec(select(ScoreResult).where(ScoreResult.request_id == "row-3")).one()
    assert invalid.request_id == "row-300" and "twelve" in (invalid.error or "")
    assert labelled.meta == {"label": "benign\nchecked twice"}


# --- empty files, header-only files, broken JSON lines -------------------------------------


def test_an_empty_csv_fails_its_run_and_a_header_only_one_is_a_run_of_no_rows(
    tmp_path: Path, engine: Any, broker: Broker
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(bulk.UnreadableInput) as caught:
        bulk.enqueue_file(None, engine, empty, SMALL, bulk.BulkOptions(id_column="id"))
    assert str(caught.value).startswith(f"{empty}: empty file (no header row, no rows); run ")
    assert failed_run(engine, empty).status == names.RUN_FAILED

    for name, text in (("header.csv", "id,a,b,label\r\n"), ("empty.jsonl", "")):
        path = tmp_path / name
        path.write_text(text)
        run = bulk.enqueue_file(None, engine, path, SMALL, bulk.BulkOptions(id_column="id"))
        assert (run.status, run.total_rows, run.enqueued_rows, run.rejected_rows) == (
            names.RUN_DONE,
            0,
            0,
            0,
        )
        assert bulk.wait(engine, run.id, poll_s=0.01, stall_timeout_s=1)
    assert broker.items == []


def test_json_lines_with_a_broken_line_and_bytes_that_are_not_utf8(
    tmp_path: Path, demo_pipeline: Any, broker: Broker
) -> None:
    engine, pipeline, dead, record = demo_pipeline
    rows = list(csv.DictReader(write_csv(tmp_path / "rows.csv", 9, seed=12).open()))
    lines = [
        json.dumps({k: (v if k in ("id", "label") else float(v)) for k, v in r.items()}).encode()
        for r in rows
    ]
    lines[3] = b'{"id": "row-3", "mean_radius": '  # cut short
    lines[6] = lines[6].replace(b'"row-6"', b'"row-\xff6"')  # not UTF-8
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\r\n".join(lines[:5]) + b"\n" + b"\n".join(lines[5:]) + b"\n")
    run = bulk.enqueue_file(
        None, engine, path, record, bulk.BulkOptions(chunk_size=4, id_column="id")
    )
    pipeline.process(broker.items)
    summary = summarize(engine, run.id)
    assert (summary.enqueued, summary.rejected, summary.ok, summary.lost) == (7, 2, 7, 0)
    recorded = run_of(engine, run.id)
    assert recorded.total_rows == 9 and recorded.status == names.RUN_RUNNING
    assert recorded.error is not None
    assert recorded.error.splitlines() == [
        "line 4: not JSON (Expecting value)",
        "line 7: not UTF-8 text",
    ]
