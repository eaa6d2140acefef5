"""Requests are checked at the envelope and against the model's input schema."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from schemas.wire import InputError, ScoreRequest, check_inputs, usable_request_id

SCHEMA = {"amount": "float", "age_days": "int", "note": "str"}
GOOD = {"amount": 120.5, "age_days": 3, "note": "hi"}


def test_a_valid_request_round_trips() -> None:
    body = {
        "request_id": "ord-81723",
        "model": "fraud",
        "inputs": GOOD,
        "metadata": {"tenant": "a"},
    }
    req = ScoreRequest.model_validate(body)
    assert req.model_version is None and req.priority == 5
    again = ScoreRequest.model_validate_json(req.model_dump_json())
    assert again == req
    assert again.model_dump(exclude_defaults=True) == body


def test_the_metadata_limit_is_the_setting() -> None:
    body = {"request_id": "r", "model": "m", "inputs": {}, "metadata": {"k": "x" * 100}}
    assert ScoreRequest.parse(body, max_metadata_bytes=200).metadata == {"k": "x" * 100}
    with pytest.raises(ValidationError, match="at most 50 allowed"):
        ScoreRequest.parse(body, max_metadata_bytes=50)


@pytest.mark.parametrize("request_id", ["", "has space", "x" * 129, "semi;colon", "ünï"])
def test_unusable_request_ids_are_rejected(request_id: str) -> None:
    with pytest.raises(ValidationError, match="request_id"):
        ScoreRequest.model_validate({"request_id": request_id, "model": "m", "inputs": {}})


def test_metadata_over_4_kib_is_rejected() -> None:
    with pytest.raises(ValidationError, match="metadata is .* bytes"):
        ScoreRequest.model_validate(
            {"request_id": "a", "model": "m", "inputs": {}, "metadata": {"blob": "x" * 5000}}
        )


def test_unknown_envelope_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ScoreRequest.model_validate({"request_id": "a", "model": "m", "inputs": {}, "x": 1})


def test_valid_inputs_pass_and_ints_widen_to_float() -> None:
    assert check_inputs({**GOOD, "amount": 3, "extra": 1}, SCHEMA, 100) == {
        "amount": 3.0,
        "age_days": 3,
        "note": "hi",
    }


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"age_days": 3, "note": "x"}, "amount: missing"),
        ({**GOOD, "amount": None}, "amount: missing"),
        ({**GOOD, "amount": "abc"}, "amount: expected float, got str 'abc'"),
        ({**GOOD, "amount": True}, "amount: expected float, got bool"),
        ({**GOOD, "age_days": 1.5}, "age_days: expected int, got float"),
        ({**GOOD, "amount": math.nan}, "amount: not a finite number (nan)"),
        ({**GOOD, "amount": -math.inf}, "amount: not a finite number (-inf)"),
        ({**GOOD, "note": "y" * 101}, "note: value too long (101 chars, at most 100)"),
    ],
)
def test_bad_inputs_name_the_field_and_the_reason(inputs: dict, reason: str) -> None:
    with pytest.raises(InputError) as err:
        check_inputs(inputs, SCHEMA, 100)
    assert reason in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InputError) as err:
        check_inputs({"note": 5}, SCHEMA, 100)
    assert str(err.value).count(";") == 2


def test_a_usable_request_id_is_matched_whole() -> None:
    assert usable_request_id("ord-81723:a.b_c")
    assert not usable_request_id("ord-81723\n")  # re.match with $ would accept this
    assert not usable_request_id("a b") and not usable_request_id("x" * 129)
