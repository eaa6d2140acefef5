"""Shared fixtures: databases (SQLite and real PostgreSQL), Redis, Kafka, demo artifacts.

The real services come from `deploy.services`, started once per session when they are
not already answering (a SCORING_TEST_* variable points a fixture at a server of your
own instead). A service that cannot start fails its tests with the reason; nothing is
skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.db import scratch_database, upgrade
from schemas.settings import (
    BrokerSettings,
    DatabaseSettings,
    KafkaSettings,
    RuntimeSettings,
    Settings,
)
from workers.runtime.models.demo.build import build_artifact


def service_url(name: str, variable: str, field: str) -> str:
    """SCORING_TEST_<...> if set, else the local service, started if need be."""
    if os.environ.get(variable):
        return os.environ[variable]
    from deploy import services

    try:
        endpoints = services.up((name,))
    except services.ServiceError as exc:
        pytest.fail(f"{name} is not available: {exc}", pytrace=False)
    return str(getattr(endpoints, field))


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
    from workers.core.pipeline import PipelineConfig, ScoringPipeline
    from workers.core.sink import ResultSink
    from workers.runtime import registry
    from workers.runtime.loaded import ModelCache
    from workers.sources.base import WorkItem

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
    return service_url("postgres", "SCORING_TEST_DATABASE_URL", "database_url")


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database per test, dropped afterwards."""
    with scratch_database(pg_server_url, "scoring_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded default and on the production database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_url("redis", "SCORING_TEST_BROKER_URL", "broker_url")


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so that tests never read each other's messages."""
    return f"score-requests-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_settings(tmp_path: Path, queue_name: str):  # type: ignore[no-untyped-def]
    """Settings for one test: its own model store and queues; `section={field: value}`
    overrides anything (e.g. `broker={"url": redis_url}`)."""

    def factory(**sections: dict[str, Any]) -> Settings:
        base = Settings(
            database=DatabaseSettings(retry_backoff_s=0.05),
            broker=BrokerSettings(
                requests_queue=queue_name,
                dead_letter_queue=f"{queue_name}.dlq",
                worker_flush_interval_s=0.02,
            ),
            kafka=KafkaSettings(),
            runtime=RuntimeSettings(model_store=tmp_path / "store", worker_name="test-worker"),
        )
        return base.replace(**sections) if sections else base

    return factory


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return service_url("kafka", "SCORING_TEST_KAFKA_BOOTSTRAP", "kafka_bootstrap")


@pytest.fixture(scope="session")
def kafka_env(kafka_bootstrap: str) -> dict[str, str]:
    """SCORING_KAFKA_* connection settings of the suite's Kafka: its SASL listener and the
    `scoring` user (SCORING_TEST_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _USERNAME,
    _PASSWORD with SCORING_TEST_KAFKA_BOOTSTRAP for a broker of your own)."""
    if os.environ.get("SCORING_TEST_KAFKA_BOOTSTRAP"):
        keys = ("SECURITY_PROTOCOL", "SASL_MECHANISM", "USERNAME", "PASSWORD")
        own = {f"SCORING_KAFKA_{k}": os.environ.get(f"SCORING_TEST_KAFKA_{k}") for k in keys}
        return {"SCORING_KAFKA_BOOTSTRAP": kafka_bootstrap, **{k: v for k, v in own.items() if v}}
    from deploy import services

    return dict(services.endpoints(("kafka",)).kafka_env or {})


@pytest.fixture(scope="session")
def kafka_settings(kafka_env: dict[str, str]) -> KafkaSettings:
    """KafkaSettings that reach the suite's Kafka (with its credentials)."""
    fields = {k.removeprefix("SCORING_KAFKA_").lower(): v for k, v in kafka_env.items()}
    return KafkaSettings.model_validate(fields)


@pytest.fixture
def make_topic(kafka_settings: KafkaSettings):  # type: ignore[no-untyped-def]
    """Creates topics of this test's own (`prefix-<random>`, N partitions); deletes them after."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**kafka_settings.client_config(), client_id="scoring-tests")
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
