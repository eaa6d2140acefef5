"""Shared fixtures: databases (SQLite and real PostgreSQL), Redis, demo artifacts, workers.

Integration fixtures read SCORING_TEST_* variables that `make test` exports after
`deploy/services.sh up`. A missing service fails the test with what to run; it never
skips silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.db import scratch_database, upgrade
from scoring.demo_model import build_artifact
from scoring.settings import Settings


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: run the suite with `make test` (it starts the services), "
            "or `make services` and export what `deploy/services.sh env` prints "
            "with SCORING_TEST_ in place of SCORING_",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo classifier, trained once per session (seeded)."""
    return build_artifact(tmp_path_factory.mktemp("artifact-v1"), seed=0)


@pytest.fixture(scope="session")
def demo_artifact_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version: same data, another seed, so its weights and sha256 differ."""
    return build_artifact(tmp_path_factory.mktemp("artifact-v2"), seed=1)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'scoring.db'}"
    upgrade(url)
    return url


@pytest.fixture
def demo_pipeline(sqlite_url: str, tmp_path: Path, demo_artifact: Path):  # type: ignore[no-untyped-def]
    """A scoring pipeline on SQLite with demo v1 registered: (engine, pipeline, the dead
    letters it sends, the version's record)."""
    from schemas.db import make_engine
    from workers import registry
    from workers.pipeline import PipelineConfig, ScoringPipeline, WorkItem
    from workers.runtime import ModelCache
    from workers.sink import ResultSink

    engine = make_engine(sqlite_url)
    record = registry.register(engine, tmp_path / "store", "demo", demo_artifact)
    dead: list[WorkItem] = []
    pipeline = ScoringPipeline(
        engine,
        ResultSink(engine),
        ModelCache(),
        PipelineConfig(worker="test-worker", max_text_chars=50, dead_letter=dead.append),
    )
    return engine, pipeline, dead, record


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return need("SCORING_TEST_DATABASE_URL")


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database per test, dropped afterwards."""
    with scratch_database(pg_server_url, "scoring_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded default and on the production database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def redis_url() -> str:
    return need("SCORING_TEST_BROKER_URL")


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so that tests never read each other's messages."""
    return f"score-requests-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_settings(tmp_path: Path, queue_name: str):  # type: ignore[no-untyped-def]
    """Settings for one test: its own model store and queues; anything else overridable."""

    def factory(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "model_store": tmp_path / "store",
            "requests_queue": queue_name,
            "dead_letter_queue": f"{queue_name}.dlq",
            "worker_flush_interval_s": 0.02,
            "db_retry_backoff_s": 0.05,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return factory


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return need("SCORING_TEST_KAFKA_BOOTSTRAP")


@pytest.fixture
def make_topic(kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    """Creates topics of this test's own (`prefix-<random>`, N partitions); deletes them after."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="scoring-tests")
    created: list[str] = []

    def factory(prefix: str = "test", partitions: int = 4) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(name, partitions, 1)])
        created.append(name)
        return name

    yield factory
    if created:
        admin.delete_topics(created, raise_errors=False)
    admin.close()
