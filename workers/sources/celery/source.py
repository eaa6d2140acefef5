"""The Celery/Redis source: settles each delivered message by its items' outcomes.

celery-batches acknowledges every message of a flush when the batch task returns, even
if it raised, so nothing may be left to chance there: before the task returns, items the
database refused (RETRY) are re-published with `attempt + 1` (dead-lettered once
MAX_ATTEMPTS is reached), and items that can never be scored were dead-lettered as they
were found. Only then is the original message acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from celery import Celery

from schemas import names
from schemas.settings import BrokerSettings
from schemas.task_repr import task_reprs
from workers.core.chunks import RowChunk
from workers.sources.base import WorkItem, retried
from workers.sources.celery.dead_letters import CeleryDeadLetters

log = logging.getLogger(__name__)

# Deliveries of one message before its items are dead-lettered instead of re-published.
MAX_ATTEMPTS = 5


class CelerySource:
    """Dead letters and re-publishing for items that came from the Redis queues."""

    name = names.SOURCE_REDIS

    def __init__(self, app: Celery, broker: BrokerSettings) -> None:
        self.app = app
        self.dead_letters = CeleryDeadLetters(app, broker.dead_letter_queue)

    def dead_letter(self, item: WorkItem) -> None:
        self.dead_letters(item)

    def settle(self, items: Sequence[WorkItem]) -> list[Any]:
        """Re-publish RETRY items, grouped by the message they came in; return the messages
        (tokens) that could not be settled that way and must stay unacknowledged."""
        groups: dict[tuple[Any, ...], list[WorkItem]] = defaultdict(list)
        for item in retried(items):
            key = (id(item.token), item.attempt, item.source, item.bulk_run_id, item.bulk_chunk)
            groups[key].append(item)
        unsettled: list[Any] = []
        for (_, attempt, source, run_id, chunk), failed in groups.items():
            try:
                if attempt >= MAX_ATTEMPTS:
                    for item in failed:
                        item.reason = f"gave up after {attempt} attempts: {item.reason}"
                        self.dead_letters(item)
                    continue
                self._republish(failed, attempt, source, run_id, chunk)
            except Exception as exc:  # noqa: BLE001 - the broker refused the write
                log.error(
                    "could not re-publish %d requests (%s): their message stays unacknowledged",
                    sum(i.size for i in failed),
                    exc,
                )
                unsettled.append(failed[0].token)
        return unsettled

    def _republish(
        self,
        failed: list[WorkItem],
        attempt: int,
        source: str,
        run_id: str | None,
        chunk: int | None = None,
    ) -> None:
        enqueued = failed[0].enqueued_at
        kwargs = {
            "source": source,
            "bulk_run_id": run_id,
            "bulk_chunk": chunk,
            "attempt": attempt + 1,
            "enqueued_at": enqueued.timestamp() if enqueued else time.time(),
        }
        requests = [i.payload for i in failed if not isinstance(i.payload, RowChunk)]
        messages: list[tuple[list[Any], dict[str, Any]]] = [
            ([], {**i.payload.to_wire(), **kwargs})
            for i in failed
            if isinstance(i.payload, RowChunk)
        ]
        if requests:
            messages.append(([requests], kwargs))
        for args, message_kwargs in messages:
            self.app.send_task(
                names.SCORE_TASK,
                args=args,
                kwargs=message_kwargs,
                countdown=min(2**attempt, 30),
                **task_reprs(args, message_kwargs),
            )
        rows = sum(i.size for i in failed)
        log.warning("re-queued %d requests (attempt %d)", rows, attempt + 1)

    def close(self) -> None:
        """Nothing to release: the Celery worker owns the broker connection."""
