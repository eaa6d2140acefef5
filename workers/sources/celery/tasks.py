"""The Celery side of a worker: a celery-batches task that hands requests to the scorer.

celery-batches buffers task messages in the worker and flushes them as one list
(`flush_every` messages or `flush_interval` seconds). The task turns each message into
work items, submits them to the process's scorer, waits, and lets the source settle them
(see source.py) before it returns and the flush is acknowledged. It never raises. A
message that came back after its worker died scoring it is scored alone, split, or
dead-lettered first (see crashes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery_batches import SimpleRequest

from schemas import names
from schemas.settings import BrokerSettings
from schemas.wire import from_epoch
from workers.core.chunks import RowChunk
from workers.sources.base import Outcome, Scorer, WorkItem
from workers.sources.celery.batches import SettledBatches
from workers.sources.celery.crashes import CrashGuard
from workers.sources.celery.prefetch import RowPrefetch
from workers.sources.celery.source import CelerySource


def register_tasks(
    app: Celery, broker: BrokerSettings, source: CelerySource, scorer: Callable[[], Scorer]
) -> None:
    """Register the scoring task on `app`; `scorer()` returns the process's scorer."""

    @app.task(
        base=SettledBatches,
        bind=True,
        shared=False,  # Celery adds shared tasks to every app; each app has its own
        name=names.SCORE_TASK,
        acks_late=True,
        typing=False,
        flush_every=1,  # then set by RowPrefetch
        flush_interval=broker.worker_flush_interval_s,
    )
    def score(task: SettledBatches, requests: list[SimpleRequest]) -> int:
        plan = guard.plan(requests)
        for req, deaths in plan.split:
            if not guard.split(req, deaths):
                task.keep_unacked(req)
        for req, deaths in plan.dead:
            if not guard.dead_letter(work_items(req)[0], deaths):
                task.keep_unacked(req)
        items: list[WorkItem] = []
        groups = plan.groups()
        for group, alone in groups:  # the fresh, those that died once, then each loner
            group_items = [item for req in group for item in work_items(req)]
            with guard.scoring(group, alone):
                scorer().submit(group_items).wait()
            items += group_items
        prefetch.observe(sum(len(g) for g, _ in groups), sum(item.size for item in items))
        unsettled = source.settle(items)
        for request in unsettled:
            task.keep_unacked(request)
        for request in {id(i.token): i.token for i in items if i.outcome is Outcome.RETRY}.values():
            if request not in unsettled:
                task.sent_back(request)
        return len(items)

    prefetch = RowPrefetch(score, broker.worker_hold_rows, broker.worker_prefetch)
    score.on_waiting = prefetch.waiting_changed
    guard = CrashGuard(app, broker.max_deliveries, source.dead_letter)


def work_items(req: SimpleRequest) -> list[WorkItem]:
    """A task message carries a list of wire requests, or one bulk chunk, plus where they
    came from and how many times it was delivered."""
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
            source=meta.get("source", names.SOURCE_REDIS),
            enqueued_at=from_epoch(meta.get("enqueued_at")),
            bulk_run_id=meta.get("bulk_run_id"),
            token=req,
            size=p.size if isinstance(p, RowChunk) else 1,
            attempt=int(meta.get("attempt", 1)),
            bulk_chunk=meta.get("bulk_chunk"),
        )
        for p in payloads
    ]
