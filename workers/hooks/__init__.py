"""Cross-cutting concerns as callbacks around each micro-batch: heartbeat, metrics, drift.

A hook sees a batch before it is scored and after, with every item's outcome and a
`BatchReport` of what the pipeline made of it; it never changes what is scored, and a
hook that raises is logged, not allowed to fail the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.sources.base import WorkItem


@dataclass
class BatchReport:
    """What the pipeline made of one micro-batch, for hooks to read (never to change).

    `rows` are its result rows (status, model, version, source, queue_ms), `calls` its
    batch_metrics rows (one per model call: size, inference_ms), `dead` every item it
    dead-lettered (parts of a bulk chunk included). `stored` is False when the batch was
    sent back (the database refused it): then nothing of `rows` is in the database.
    `batch_limits` holds every version whose calls ran out of memory in this process,
    with the batch size it is now cut at (workers/core/oom.py).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    dead: list[WorkItem] = field(default_factory=list)
    stored: bool = False
    batch_limits: dict[tuple[str, int], int] = field(default_factory=dict)


class BatchHook(Protocol):
    def before_batch(self, items: Sequence[WorkItem]) -> None: ...

    def after_batch(
        self, items: Sequence[WorkItem], seconds: float, report: BatchReport | None = None
    ) -> None: ...
