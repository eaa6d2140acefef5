"""Dead letters on the Redis path: requests that cannot be scored, parked with the reason."""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery
from kombu import Queue

from schemas.tables import utcnow
from workers.core.chunks import RowChunk
from workers.sources.base import WorkItem

log = logging.getLogger(__name__)


class CeleryDeadLetters:
    """Publishes each dead item, with its reason, to a plain queue on the Celery broker."""

    def __init__(self, app: Celery, queue_name: str) -> None:
        self.app = app
        self.queue = Queue(queue_name, routing_key=queue_name)
        self.count = 0

    def __call__(self, item: WorkItem) -> None:
        self.publish(dead_letter_body(item))

    def publish(self, body: dict[str, Any]) -> None:
        """Park one dead letter (a JSON object with at least `reason` and `payload`)."""
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange="",
                routing_key=self.queue.name,
                declare=[self.queue],
                serializer="json",
                retry=True,
            )
        self.count += 1
        log.warning("dead letter (%s): %s", body.get("source"), body.get("reason"))


def dead_letter_body(item: WorkItem) -> dict[str, Any]:
    payload = item.payload
    if isinstance(payload, RowChunk):
        payload = payload.to_wire()
    if isinstance(payload, bytes | bytearray):
        payload = payload.decode("utf-8", errors="replace")
    if not isinstance(payload, str):
        payload = json.dumps(payload, default=str)
    return {
        "reason": item.reason,
        "source": item.source,
        "payload": payload,
        "bulk_run_id": item.bulk_run_id,
        "bulk_chunk": item.bulk_chunk,
        "at": utcnow().isoformat(),
    }
