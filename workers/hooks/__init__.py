"""Cross-cutting concerns as callbacks around each micro-batch: heartbeat, metrics, drift.

A hook sees a batch before it is scored and after, with every item's outcome; it never
changes what is scored, and a hook that raises is logged, not allowed to fail the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from workers.sources.base import WorkItem


class BatchHook(Protocol):
    def before_batch(self, items: Sequence[WorkItem]) -> None: ...

    def after_batch(self, items: Sequence[WorkItem], seconds: float) -> None: ...
