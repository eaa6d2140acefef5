"""Settings: one frozen section per concern, secrets that never print, client configs."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from schemas.settings import (
    SECTIONS,
    BrokerSettings,
    DatabaseSettings,
    KafkaSettings,
    Settings,
    env_names,
)


def test_each_section_reads_its_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_DATABASE_URL", "postgresql+psycopg://u:pw@db/x")
    monkeypatch.setenv("SCORING_DB_RETRIES", "3")
    monkeypatch.setenv("SCORING_KAFKA_TOPIC", "t")
    monkeypatch.setenv("SCORING_MAX_BATCH_SIZE", "64")
    s = Settings.from_env()
    assert s.database.sqlalchemy_url() == "postgresql+psycopg://u:pw@db/x"
    assert (s.database.retries, s.kafka.topic, s.batching.max_batch_size) == (3, "t", 64)


def test_urls_with_passwords_never_print() -> None:
    s = Settings(
        database=DatabaseSettings(url="postgresql+psycopg://app:hunter22@db/x"),
        broker=BrokerSettings(url="redis://worker:hunter33@r:6379/0"),
    )
    shown = repr(s) + str(s) + s.model_dump_json()
    assert "hunter22" not in shown and "hunter33" not in shown
    assert s.database.display_url() == "postgresql+psycopg://app:**********@db/x"
    assert s.broker.display_url() == "redis://worker:**********@r:6379/0"
    assert s.broker.celery_config()["broker_url"] == "redis://worker:hunter33@r:6379/0"


def test_sections_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka.topic = "other"  # type: ignore[misc]


def test_replace_checks_values_and_leaves_the_original_alone() -> None:
    s = Settings()
    other = s.replace(kafka={"topic": "t2"}, broker={"requests_queue": "q2"})
    assert (other.kafka.topic, other.broker.requests_queue) == ("t2", "q2")
    assert s.kafka.topic == "score-requests"
    with pytest.raises(ValidationError):
        s.replace(batching={"max_batch_size": 0})


def test_the_producer_waits_for_all_replicas_and_never_duplicates() -> None:
    config = KafkaSettings().producer_config()
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["bootstrap_servers"] == ["127.0.0.1:9092"]


def test_the_consumer_commits_by_hand_and_starts_at_the_earliest_uncommitted() -> None:
    config = KafkaSettings(group="g").consumer_config()
    assert config["enable_auto_commit"] is False and config["auto_offset_reset"] == "earliest"
    assert config["group_id"] == "g"


def test_sasl_credentials_come_from_settings_and_are_required_together() -> None:
    secure = KafkaSettings(
        bootstrap="a:9093, b:9093",
        security_protocol="SASL_SSL",
        username="svc",
        password=SecretStr("s3cret"),
        sasl_mechanism="SCRAM-SHA-512",
    )
    config = secure.client_config()
    assert config["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert config["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(secure)
    with pytest.raises(ValueError, match="SCORING_KAFKA_PASSWORD"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT").client_config()


def test_every_field_has_one_environment_variable() -> None:
    names = env_names()
    fields = sum(len(cls.model_fields) for cls in SECTIONS.values())
    assert len(names) == fields  # no two fields share a variable
    assert names["SCORING_DATABASE_URL"] == ("database", "url")
    assert names["SCORING_KAFKA_BOOTSTRAP"] == ("kafka", "bootstrap")
    assert all(name.startswith("SCORING_") for name in names)
