"""Items whose batch was not stored go back to the queue with an attempt count, chunks as
chunks and requests as requests, and are dead-lettered once the attempts run out."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from schemas.chunks import REQUEST_ID_COLUMN, encode_chunk
from schemas.settings import BrokerSettings
from schemas.tables import utcnow
from workers.core.chunks import RowChunk
from workers.sources.base import Outcome, WorkItem
from workers.sources.celery.dead_letters import dead_letter_body
from workers.sources.celery.source import MAX_ATTEMPTS, CelerySource


class Sent:
    """Stands in for the broker: what the worker would publish is beside the point here."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send_task(self, name: str, **fields: Any) -> None:
        self.messages.append({"name": name, **fields})


def source_on(app: Sent) -> tuple[CelerySource, list[WorkItem]]:
    source = CelerySource(app, BrokerSettings())  # type: ignore[arg-type]
    dead: list[WorkItem] = []
    source.dead_letters = dead.append  # type: ignore[assignment]
    return source, dead


def chunk_item(attempt: int) -> WorkItem:
    rows = pa.RecordBatch.from_arrays([pa.array(["a", "b"])], names=[REQUEST_ID_COLUMN])
    message = {"chunk": encode_chunk(rows), "model": "demo", "model_version": 1}
    chunk = RowChunk.from_message(message)
    item = WorkItem(chunk, "bulk", utcnow(), "run1", size=chunk.size, attempt=attempt)
    item.token = SimpleNamespace(id="m1")
    item.outcome, item.reason = Outcome.RETRY, "database write failed"
    return item


def request_items(attempt: int) -> list[WorkItem]:
    message = SimpleNamespace(id="m2")
    items = [
        WorkItem({"request_id": f"r{i}"}, "redis", utcnow(), token=message, attempt=attempt)
        for i in range(2)
    ]
    for item in items:
        item.outcome, item.reason = Outcome.RETRY, "database write failed"
    return items


def test_stored_and_dead_items_are_not_sent_back() -> None:
    app = Sent()
    source, dead = source_on(app)
    done = request_items(attempt=1)
    done[0].outcome, done[1].outcome = Outcome.STORED, Outcome.DEAD
    source.settle(done)
    assert app.messages == [] and dead == []


def test_a_chunk_goes_back_whole_and_requests_go_back_together() -> None:
    app = Sent()
    source, dead = source_on(app)
    chunk = chunk_item(attempt=1)
    source.settle([chunk, *request_items(attempt=2)])
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
    app = Sent()
    source, dead = source_on(app)
    source.settle([chunk_item(attempt=MAX_ATTEMPTS)])
    assert app.messages == [] and len(dead) == 1
    body = dead_letter_body(dead[0])
    assert body["reason"] == f"gave up after {MAX_ATTEMPTS} attempts: database write failed"
    parked = json.loads(body["payload"])
    assert RowChunk.from_message(parked).rows.num_rows == 2
