"""What the Kafka producer puts on the wire, and how client options come from Settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from producers.kafka_producer import encode, kafka_client_config, producer_config
from schemas.tables import utcnow
from scoring.settings import Settings
from tests.helpers import demo_requests
from workers import registry
from workers.pipeline import PipelineConfig, ScoringPipeline, WorkItem
from workers.runtime import ModelCache
from workers.sink import ResultSink


def test_a_request_is_keyed_by_its_id_and_sent_as_compact_json() -> None:
    request = demo_requests(1, metadata={"tenant": "ü"})[0]
    key, value = encode(request)
    assert key == b"r-0"
    body = json.loads(value.decode("utf-8"))
    assert body["request_id"] == "r-0" and body["inputs"] == request["inputs"]
    assert body["metadata"] == {"tenant": "ü"} and "model_version" not in body


def test_an_invalid_request_is_refused_before_sending() -> None:
    with pytest.raises(ValidationError):
        encode({"request_id": "bad id!", "model": "demo", "inputs": {}})


def test_the_producer_waits_for_all_replicas_and_never_duplicates() -> None:
    config = producer_config(Settings())
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["bootstrap_servers"] == ["127.0.0.1:9092"]


def test_sasl_credentials_come_from_settings_and_are_required_together() -> None:
    secure = Settings(
        kafka_bootstrap="a:9093, b:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_username="svc",
        kafka_password=SecretStr("s3cret"),
        kafka_sasl_mechanism="SCRAM-SHA-512",
    )
    config = kafka_client_config(secure)
    assert config["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert config["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(secure)
    with pytest.raises(ValueError, match="SCORING_KAFKA_PASSWORD"):
        kafka_client_config(Settings(kafka_security_protocol="SASL_PLAINTEXT"))


def test_the_pipeline_hands_each_stored_item_its_result_row(
    sqlite_url: str, tmp_path: Path, demo_artifact: Path
) -> None:
    from schemas.db import make_engine

    engine = make_engine(sqlite_url)
    registry.register(engine, tmp_path / "store", "demo", demo_artifact)
    pipeline = ScoringPipeline(engine, ResultSink(engine), ModelCache(), PipelineConfig())
    good = demo_requests(3)
    bad = dict(good[0], request_id="bad", inputs={})
    items = [
        WorkItem(payload=json.dumps(p).encode(), source="kafka", enqueued_at=utcnow())
        for p in [*good, bad]
    ] + [WorkItem(payload=b"{nope", source="kafka")]
    pipeline.process(items)
    assert [i.outcome for i in items] == ["stored"] * 4 + ["dead"]
    assert [i.result["status"] for i in items[:4]] == ["ok", "ok", "ok", "invalid"]  # type: ignore[index]
    assert items[0].result["request_id"] == "r-0" and items[0].result["outputs"]["label"]  # type: ignore[index]
    assert items[4].result is None
