"""Items whose batch was not stored go back to the queue with an attempt count, chunks as
chunks and requests as requests, and are dead-lettered once the attempts run out."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from schemas.chunks import REQUEST_ID_COLUMN, encode_chunk
from schemas.tables import utcnow
from workers.chunks import RowChunk
from workers.dead_letters import dead_letter_body
from workers.pipeline import WorkItem
from workers.tasks import MAX_ATTEMPTS, _requeue_failed


class Sent:
    """Stands in for the broker: what the worker would publish is beside the point here."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send_task(self, name: str, **fields: Any) -> None:
        self.messages.append({"name": name, **fields})


def chunk_item(attempt: int) -> WorkItem:
    rows = pa.RecordBatch.from_arrays([pa.array(["a", "b"])], names=[REQUEST_ID_COLUMN])
    message = {"chunk": encode_chunk(rows), "model": "demo", "model_version": 1}
    item = WorkItem(RowChunk.from_message(message), "bulk", utcnow(), "run1")
    item.token = (SimpleNamespace(id="m1"), attempt)
    item.outcome, item.reason = "retry", "database write failed"
    return item


def request_items(attempt: int) -> list[WorkItem]:
    items = [WorkItem({"request_id": f"r{i}"}, "redis", utcnow()) for i in range(2)]
    for item in items:
        item.token = (SimpleNamespace(id="m2"), attempt)
        item.outcome, item.reason = "retry", "database write failed"
    return items


def test_a_chunk_goes_back_whole_and_requests_go_back_together() -> None:
    app, dead = Sent(), []
    chunk = chunk_item(attempt=1)
    _requeue_failed(app, [chunk, *request_items(attempt=2)], dead.append)  # type: ignore[arg-type]
    assert not dead and len(app.messages) == 2
    by_source = {m["kwargs"]["source"]: m for m in app.messages}
    again = by_source["bulk"]
    assert again["args"] == [] and again["kwargs"]["attempt"] == 2
    assert RowChunk.from_message(again["kwargs"]).rows.equals(chunk.payload.rows)
    assert again["kwargs"]["bulk_run_id"] == "run1"
    requests = by_source["redis"]
    assert requests["args"] == [[{"request_id": "r0"}, {"request_id": "r1"}]]
    assert requests["kwargs"]["attempt"] == 3


def test_after_the_last_attempt_a_chunk_is_dead_lettered_with_its_rows() -> None:
    app, dead = Sent(), []
    _requeue_failed(app, [chunk_item(attempt=MAX_ATTEMPTS)], dead.append)  # type: ignore[arg-type]
    assert app.messages == [] and len(dead) == 1
    body = dead_letter_body(dead[0])
    assert body["reason"] == f"gave up after {MAX_ATTEMPTS} attempts: database write failed"
    parked = json.loads(body["payload"])
    assert RowChunk.from_message(parked).rows.num_rows == 2
