"""A feedback record becomes a row, or a reason; labels are kept as the text that
results' outputs->>'label' gives, so that accuracy compares like with like."""

from __future__ import annotations

import pytest

from workers.core.feedback import check_record


@pytest.mark.parametrize(
    ("label", "stored"),
    [("benign", "benign"), (1, "1"), (0.5, "0.5"), (True, "true"), (False, "false")],
)
def test_a_label_is_stored_as_the_text_json_gives_it(label: object, stored: str) -> None:
    row, reason = check_record({"request_id": "r-1", "label": label, "model": "demo"})
    assert reason is None
    assert row == {"request_id": "r-1", "model_name": "demo", "label": stored}


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"label": "benign"}, "request_id must be a string"),
        ({"request_id": "r-1"}, "r-1: label must be a string"),
        ({"request_id": "r-1", "label": {"class": "a"}}, "r-1: label must be a string"),
        ({"request_id": "r-1", "label": "a", "model": 3}, "r-1: model must be a model name"),
    ],
)
def test_a_record_that_is_not_feedback_gets_a_reason(record: object, says: str) -> None:
    row, reason = check_record(record)
    assert row is None
    assert reason is not None and reason.startswith(says), reason


def test_the_model_may_come_from_the_caller() -> None:
    row, _ = check_record({"request_id": "r-1", "label": "a"}, default_model="demo")
    assert row is not None and row["model_name"] == "demo"
