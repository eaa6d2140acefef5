"""The Celery side of a worker: a celery-batches task that hands requests to the scorer.

celery-batches buffers task messages in the worker and flushes them as one list
(`flush_every` messages or `flush_interval` seconds). It acknowledges every message of a
flush when the task returns, even if it raised, so the task body never raises: each
request's outcome is recorded here, and a batch the database refused is re-published
(with an attempt count) before its messages are acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from celery import Celery, signals
from celery_batches import Batches, SimpleRequest

from scoring import constants as c
from scoring.settings import Settings
from workers.chunks import RowChunk
from workers.context import LazyContext, build_context
from workers.dead_letters import CeleryDeadLetters
from workers.kafka_runner import StreamThread, route_dead_letters
from workers.pipeline import WorkItem, from_epoch
from workers.prefetch import RowPrefetch

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def register_tasks(app: Celery, settings: Settings) -> None:
    dead_letters = CeleryDeadLetters(app, settings.dead_letter_queue)
    context = LazyContext(lambda: build_context(settings, route_dead_letters(dead_letters)))
    app.scoring_context = context  # type: ignore[attr-defined]
    # `scoring worker --kafka`: the Kafka consumer shares this process's scorer and model.
    stream = StreamThread(settings, lambda: context.get().service)

    @app.task(
        base=Batches,
        shared=False,  # Celery adds shared tasks to every app; each app has its own
        name=c.SCORE_TASK,
        acks_late=True,
        typing=False,
        flush_every=1,  # then set by RowPrefetch
        flush_interval=settings.worker_flush_interval_s,
    )
    def score(requests: list[SimpleRequest]) -> int:
        items = [item for req in requests for item in _items(req)]
        prefetch.observe(len(requests), sum(item.size for item in items))
        ticket = context.get().service.submit(items)
        ticket.wait()
        _requeue_failed(app, items, dead_letters)
        return len(items)

    prefetch = RowPrefetch(score, settings.worker_hold_rows, settings.worker_prefetch)

    @signals.worker_ready.connect(weak=False)
    def _warm(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        for line in context.get().warm_up():
            log.info("warmed up %s", line)
        if settings.kafka_in_worker:
            stream.start()

    @signals.worker_shutdown.connect(weak=False)
    def _close(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            stream.stop()
            context.close()


def _items(req: SimpleRequest) -> list[WorkItem]:
    """A task message carries a list of wire requests, or one bulk chunk, plus where they
    came from."""
    meta = req.kwargs
    if "chunk" in meta:
        payloads: Any = [RowChunk.from_message(meta)]
    else:
        payloads = req.args[0] if req.args else meta.get("requests", [])
    if not isinstance(payloads, list):
        payloads = [payloads]
    return [
        WorkItem(
            payload=p,
            source=meta.get("source", c.SOURCE_REDIS),
            enqueued_at=from_epoch(meta.get("enqueued_at")),
            bulk_run_id=meta.get("bulk_run_id"),
            token=(req, meta.get("attempt", 1)),
        )
        for p in payloads
    ]


def _requeue_failed(app: Celery, items: list[WorkItem], dead_letters: CeleryDeadLetters) -> None:
    """Re-publish items whose batch was not stored; dead-letter them after MAX_ATTEMPTS."""
    groups: dict[tuple[Any, ...], list[WorkItem]] = defaultdict(list)
    for item in items:
        if item.outcome == "retry":
            req, attempt = item.token
            groups[(req.id, attempt, item.source, item.bulk_run_id)].append(item)
    for (_, attempt, source, run_id), failed in groups.items():
        if attempt >= MAX_ATTEMPTS:
            for item in failed:
                item.reason = f"gave up after {attempt} attempts: {item.reason}"
                dead_letters(item)
            continue
        enqueued = failed[0].enqueued_at
        kwargs = {
            "source": source,
            "bulk_run_id": run_id,
            "attempt": attempt + 1,
            "enqueued_at": enqueued.timestamp() if enqueued else time.time(),
        }
        requests = [i.payload for i in failed if not isinstance(i.payload, RowChunk)]
        messages = [
            ([], {**i.payload.to_wire(), **kwargs})
            for i in failed
            if isinstance(i.payload, RowChunk)
        ]
        if requests:
            messages.append(([requests], kwargs))
        for args, message_kwargs in messages:
            app.send_task(
                c.SCORE_TASK, args=args, kwargs=message_kwargs, countdown=min(2**attempt, 30)
            )
        rows = sum(i.size for i in failed)
        log.warning("re-queued %d requests (attempt %d)", rows, attempt + 1)
