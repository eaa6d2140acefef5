"""What the Kafka producer puts on the wire."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from producers.kafka_producer import encode
from tests.helpers import demo_requests


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
