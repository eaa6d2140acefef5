"""The scoring request as it travels on Redis and Kafka, and input checks against a schema."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
# Default of SCORING_MAX_METADATA_BYTES; validation takes the setting as context.
DEFAULT_MAX_METADATA_BYTES = 4096

# Types a model version may declare for an input field, and the Python types they accept.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "float": (float, int),
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
}


class ScoreRequest(BaseModel):
    """One scoring request; `request_id` is the idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    model: str = Field(min_length=1, max_length=128)
    model_version: int | None = Field(default=None, ge=1)
    inputs: dict[str, Any]
    priority: int = Field(default=5, ge=0, le=9)
    deadline_ms: int | None = Field(default=None, gt=0)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not value:
            return value
        limit = (info.context or {}).get("max_metadata_bytes", DEFAULT_MAX_METADATA_BYTES)
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > limit:
            raise ValueError(f"metadata is {size} bytes; at most {limit} allowed")
        return value

    @classmethod
    def parse(cls, body: dict[str, Any], max_metadata_bytes: int) -> ScoreRequest:
        """Validate a decoded wire message under the SCORING_MAX_METADATA_BYTES limit."""
        return cls.model_validate(body, context={"max_metadata_bytes": max_metadata_bytes})


def usable_request_id(value: str) -> bool:
    """What the request_id field accepts (fullmatch: a trailing newline is no id)."""
    return _REQUEST_ID.fullmatch(value) is not None


class InputError(ValueError):
    """An input that does not match the model version's declared schema."""


def check_inputs(
    inputs: dict[str, Any], schema: dict[str, str], max_text_chars: int
) -> dict[str, Any]:
    """Return `inputs` restricted to the schema's fields, or raise InputError with the reason.

    Rejects missing fields, wrong types (bool is not a number), NaN and infinity, and
    strings longer than `max_text_chars`. Extra fields are ignored.
    """
    problems: list[str] = []
    clean: dict[str, Any] = {}
    for name, type_name in schema.items():
        if name not in inputs or inputs[name] is None:
            problems.append(f"{name}: missing")
            continue
        value = inputs[name]
        problem = _field_problem(value, type_name, max_text_chars)
        if problem:
            problems.append(f"{name}: {problem}")
        else:
            clean[name] = float(value) if type_name == "float" else value
    if problems:
        raise InputError("; ".join(problems))
    return clean


def _field_problem(value: Any, type_name: str, max_text_chars: int) -> str | None:
    if isinstance(value, str) and len(value) > max_text_chars:
        return f"value too long ({len(value)} chars, at most {max_text_chars})"
    accepted = FIELD_TYPES[type_name]
    if isinstance(value, bool) and type_name != "bool":
        return f"expected {type_name}, got bool"
    if not isinstance(value, accepted):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"expected {type_name}, got {type(value).__name__} {shown}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"not a finite number ({value})"
    return None


def parse_payload(payload: Any, max_metadata_bytes: int, max_bytes: int) -> ScoreRequest:
    """A request as a source hands it over (a dict, JSON text, or bytes from Kafka, None
    for a tombstone) checked and parsed; ValueError says why it cannot be keyed. Bytes
    over `max_bytes` are refused before they are decoded."""
    if payload is None:
        raise ValueError("a tombstone (the record's value is null): nothing to score")
    if isinstance(payload, bytes | bytearray):
        if len(payload) > max_bytes:
            raise ValueError(
                f"request of {len(payload)} bytes is over SCORING_MAX_REQUEST_BYTES ({max_bytes})"
            )
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc}") from exc
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return ScoreRequest.parse(payload, max_metadata_bytes)


def expired(deadline_ms: int | None, enqueued_at: datetime | None, now: datetime) -> bool:
    """A deadline (from enqueueing) that has passed by `now`; no deadline never expires."""
    if not deadline_ms or enqueued_at is None:
        return False
    return (now - enqueued_at).total_seconds() * 1000 > deadline_ms


def from_epoch(ts: float | None) -> datetime | None:
    """An enqueue timestamp carried on the wire as epoch seconds."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
