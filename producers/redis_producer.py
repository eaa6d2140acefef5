"""Put scoring requests on the Redis queue that Celery workers consume.

One task message carries up to `per_message` requests, and messages go out over one
pooled connection: publishing is what limits a producer, not the requests themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import pyarrow as pa
from celery import Celery

from schemas import names as c
from schemas.chunks import encode_chunk
from schemas.task_repr import task_reprs
from schemas.wire import ScoreRequest

# Retries that outlast a Sentinel failover (the primary's down-after time, then the
# promotion: seconds) for about a minute; Celery's default gives up after ~0.6 s.
FAILOVER_RETRY_POLICY = {
    "max_retries": 35,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}


class RedisProducer:
    """Sends wire requests as `scoring.score` task messages (JSON, never pickle).

    `retry_policy` (Celery's task_publish_retry_policy by default): how long a publish
    retries an unreachable broker; long-running producers pass FAILOVER_RETRY_POLICY."""

    def __init__(
        self, app: Celery, queue: str | None = None, retry_policy: dict[str, Any] | None = None
    ) -> None:
        self.app = app
        self.queue = queue or app.conf.task_default_queue
        self.retry = {"retry_policy": retry_policy} if retry_policy else {}

    def send(
        self,
        requests: Iterable[ScoreRequest | dict[str, Any]],
        *,
        per_message: int = 64,
        source: str = c.SOURCE_REDIS,
        bulk_run_id: str | None = None,
        validate: bool = True,
        bulk_chunk: int | None = None,
    ) -> int:
        """Validate (unless told not to) and publish; returns how many requests were sent.

        Raises pydantic.ValidationError on the first bad request before anything is sent
        from its message.
        """
        sent = 0
        with self.app.producer_or_acquire() as producer:
            for group in _chunks(requests, per_message):
                payloads = [_as_dict(r, validate) for r in group]
                kwargs = {
                    "source": source,
                    "bulk_run_id": bulk_run_id,
                    **({"bulk_chunk": bulk_chunk} if bulk_chunk is not None else {}),
                    "enqueued_at": time.time(),
                }
                self.app.send_task(
                    c.SCORE_TASK,
                    args=[payloads],
                    kwargs=kwargs,
                    queue=self.queue,
                    producer=producer,
                    priority=_kombu_priority(payloads),
                    **self.retry,
                    **task_reprs([payloads], kwargs),
                )
                sent += len(payloads)
        return sent

    def send_chunk(
        self,
        rows: pa.RecordBatch,
        *,
        model: str,
        model_version: int,
        deadline_ms: int | None = None,
        source: str = c.SOURCE_BULK,
        bulk_run_id: str | None = None,
        bulk_chunk: int | None = None,
    ) -> int:
        """Publish one columnar chunk (schemas/chunks.py) of a pinned model version; returns
        its row count. The worker checks every row, so nothing is validated here."""
        kwargs = {
            "chunk": encode_chunk(rows),
            "model": model,
            "model_version": model_version,
            "deadline_ms": deadline_ms,
            "source": source,
            "bulk_run_id": bulk_run_id,
            "bulk_chunk": bulk_chunk,
            "enqueued_at": time.time(),
        }
        self.app.send_task(
            c.SCORE_TASK,
            args=[],
            kwargs=kwargs,
            queue=self.queue,
            priority=_kombu_priority([{}]),  # a bulk row's priority is the default
            **self.retry,
            **task_reprs([], kwargs),
        )
        return rows.num_rows

    def depth(self) -> int:
        """Messages waiting on the queue, every priority step (kombu's passive declare);
        0 when the broker does not know the queue yet."""
        from kombu.exceptions import ChannelError

        with self.app.connection_for_read() as conn:
            try:
                declared = conn.default_channel.queue_declare(queue=self.queue, passive=True)
            except ChannelError:
                return 0
            return int(declared.message_count)


def _as_dict(request: ScoreRequest | dict[str, Any], validate: bool) -> dict[str, Any]:
    if isinstance(request, ScoreRequest):
        return request.model_dump(exclude_none=True)
    if validate:
        ScoreRequest.model_validate(request)
    return request


def _kombu_priority(payloads: list[dict[str, Any]]) -> int:
    """Wire priority 9 is most urgent; kombu's Redis transport serves 0 first."""
    return 9 - max((int(p.get("priority", 5)) for p in payloads), default=5)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
