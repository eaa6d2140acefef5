"""Publish scoring requests to Kafka for upstream systems: confirmed, keyed, JSON only.

The producer waits for every in-sync replica (`acks=all`) and is idempotent, so a retried
send never writes a record twice. The key is the request_id (one request, one partition,
in order) and the value is the wire message of DESIGN.md as UTF-8 JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from schemas.settings import KafkaSettings
from schemas.wire import ScoreRequest

log = logging.getLogger(__name__)

# Records sent before waiting for their confirmations: bounds memory, keeps the pipe full.
CONFIRM_EVERY = 5_000


class KafkaDeliveryError(RuntimeError):
    """Some records were not confirmed by the broker; `confirmed` says how many were."""

    def __init__(self, message: str, confirmed: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed


def encode(request: ScoreRequest | dict[str, Any], validate: bool = True) -> tuple[bytes, bytes]:
    """(key, value) of one request; raises pydantic.ValidationError when it is invalid."""
    if isinstance(request, dict) and validate:
        request = ScoreRequest.model_validate(request)
    body = request.model_dump(exclude_none=True) if isinstance(request, ScoreRequest) else request
    value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return str(body["request_id"]).encode("utf-8"), value


class EventProducer:
    """Sends scoring requests to the requests topic and confirms each delivery.

    No connection is made until `open()` (or `with EventProducer(...)`).
    """

    def __init__(self, kafka: KafkaSettings, topic: str | None = None, **overrides: Any) -> None:
        self.kafka = kafka
        self.topic = topic or kafka.topic
        self.overrides = overrides
        self._producer: Any = None

    def open(self) -> EventProducer:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(**{**self.kafka.producer_config(), **self.overrides})
        return self

    def __enter__(self) -> EventProducer:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    def send(self, requests: Iterable[ScoreRequest | dict[str, Any]], validate: bool = True) -> int:
        """Publish and wait for confirmation; returns how many records the broker confirmed.

        Raises pydantic.ValidationError for an invalid request (those before it are already
        confirmed) and KafkaDeliveryError when the broker did not confirm some records.
        """
        confirmed, pending = 0, []
        for request in requests:
            key, value = encode(request, validate)
            pending.append(self._producer.send(self.topic, key=key, value=value))
            if len(pending) >= CONFIRM_EVERY:
                confirmed += self.confirm(pending, confirmed)
                pending = []
        return confirmed + self.confirm(pending, confirmed)

    def send_raw(self, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None) -> int:
        """Publish bytes as they are (no validation; for tests and replays); confirmed count."""
        keys = keys or [None] * len(values)
        pending = [
            self._producer.send(self.topic, key=k, value=v)
            for k, v in zip(keys, values, strict=True)
        ]
        return self.confirm(pending, 0)

    def confirm(self, futures: list[Any], before: int) -> int:
        """Flush, then check every future; raise KafkaDeliveryError naming what failed."""
        if not futures:
            return 0
        self._producer.flush()
        errors = [f.exception for f in futures if f.failed()]
        ok = len(futures) - len(errors)
        if errors:
            raise KafkaDeliveryError(
                f"{len(errors)} of {len(futures)} records not confirmed by Kafka "
                f"({type(errors[0]).__name__}: {errors[0]})",
                confirmed=before + ok,
            )
        return ok


def validation_message(exc: ValidationError) -> str:
    """A one-line reason for a request that failed validation."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )
