"""Expected failures, tried as a new user would: one line that says what to do, exit 2,
no traceback, no password."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers import run_scoring

pytestmark = pytest.mark.integration

PASSWORD = "n0t-shown-Anywhere"


def scoring(cwd: Path, *args: str, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}
    done = run_scoring(*args, env={**clean, **env}, cwd=cwd, timeout=180)
    return done.returncode, done.stdout + done.stderr


def one_error(output: str) -> str:
    """The single `error:` line; anything else printed is a log line with a timestamp."""
    errors = [line for line in output.splitlines() if "error:" in line or "ERROR" in line]
    assert len(errors) == 1, output
    assert "Traceback" not in output and PASSWORD not in output, output
    return errors[0]


@pytest.fixture
def empty_pg(pg_server_url: str) -> Iterator[str]:
    """A PostgreSQL database that was never migrated."""
    name = f"empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--no-kafka"],
        ["models", "list"],
        ["models", "promote", "demo", "99"],
        ["bulk", "FILE", "--model", "demo"],
        ["bulk", "--status", "nope"],
    ],
)
def test_a_database_never_migrated_says_run_db_upgrade(
    args: list[str], empty_pg: str, tmp_path: Path
) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n")
    args = [str(tmp_path / "rows.jsonl") if a == "FILE" else a for a in args]
    code, out = scoring(tmp_path, *args, SCORING_DATABASE_URL=empty_pg)
    assert code == 2, out
    assert "database not migrated: run `scoring db upgrade`" in one_error(out)


def test_the_embedded_sqlite_default_migrates_itself(tmp_path: Path) -> None:
    code, out = scoring(tmp_path, "models", "promote", "demo", "99")
    assert code == 2 and "model 'demo' has no version 99" in one_error(out)
    code, out = scoring(tmp_path, "status", "--no-kafka")
    assert code == 0, out


@pytest.mark.parametrize(
    "args", [["status", "--no-kafka"], ["models", "list"], ["worker", "--cpu", "1"]]
)
def test_an_unreachable_database_is_named_without_its_password(
    args: list[str], tmp_path: Path, redis_url: str
) -> None:
    url = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/x"
    code, out = scoring(tmp_path, *args, SCORING_DATABASE_URL=url, SCORING_BROKER_URL=redis_url)
    assert code == 2, out
    assert "cannot reach the database at postgresql+psycopg://app:****" in one_error(out)


@pytest.mark.parametrize(
    "args",
    [["produce", "--redis", "-f", "FILE"], ["worker", "--cpu", "1"], ["flower"]],
)
def test_an_unreachable_or_refusing_broker_is_named(
    args: list[str], tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "one.jsonl").write_text('{"request_id": "a", "model": "demo", "inputs": {}}\n')
    args = [str(tmp_path / "one.jsonl") if a == "FILE" else a for a in args]
    refusing = make_url(redis_url).set(password=PASSWORD).render_as_string(hide_password=False)
    for url, said in (
        (f"redis://app:{PASSWORD}@127.0.0.1:1/0", "Connection refused"),
        (refusing.replace("redis+", ""), "invalid username-password pair"),
    ):
        code, out = scoring(
            tmp_path, *args, SCORING_BROKER_URL=url, SCORING_FLOWER_AUTH="ops:pw-for-flower"
        )
        line = one_error(out)
        assert code == 2 and "cannot reach the broker at redis://" in line and said in line, out


@pytest.mark.parametrize("args", [["stream"], ["status", "--kafka"]])
def test_an_unreachable_kafka_is_named(args: list[str], tmp_path: Path) -> None:
    code, out = scoring(tmp_path, *args, SCORING_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert code == 2 and "Kafka at 127.0.0.1:1" in one_error(out), out


@pytest.mark.parametrize(
    "args",
    [
        ["bulk", "FILE", "--model", "nope"],
        ["models", "validate", "nope", "1"],
        ["models", "rollback", "nope"],
    ],
)
def test_an_unknown_model_is_named(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n")
    args = [str(tmp_path / "rows.jsonl") if a == "FILE" else a for a in args]
    code, out = scoring(tmp_path, *args)
    assert code == 2 and "'nope'" in one_error(out), out


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/x", "connection failed"),
        ("sqlite:///OTHER", "no such table: nightly"),
        ("not a url", "--from: not a database URL"),
    ],
)
def test_a_bulk_query_names_its_own_database_not_scoring_database_url(
    source: str, said: str, tmp_path: Path, demo_artifact: Path
) -> None:
    """Errors of the `--from` database were once explained as SCORING_DATABASE_URL's."""
    code, out = scoring(tmp_path, "models", "register", "demo", str(demo_artifact))
    assert code == 0, out
    source = source.replace("OTHER", str(tmp_path / "other.db"))
    code, out = scoring(
        tmp_path, "bulk", "--sql", "SELECT * FROM nightly", "--from", source, "--model", "demo"
    )
    line = one_error(out)
    assert code == 2 and said in line, out
    assert "--from" in line and "SCORING_DATABASE_URL" not in line and "scoring.db" not in line
