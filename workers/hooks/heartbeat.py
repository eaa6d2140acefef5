"""A heartbeat file a container healthcheck reads: proof the worker is consuming.

After each micro-batch (and once at start) the process writes, atomically, a small JSON
file: when it last finished a batch, how many it finished, and its name. `python -m
workers.health` (the images' HEALTHCHECK) reads it, so a worker whose process lives but
that stopped consuming (celery#10302) is reported unhealthy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from workers.hooks import BatchReport
from workers.sources.base import WorkItem


class Heartbeat:
    def __init__(self, path: Path, worker: str, min_interval_s: float = 1.0) -> None:
        self.path = path
        self.worker = worker
        self.min_interval_s = min_interval_s
        self.batches = 0
        self._written = 0.0

    def beat(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < self.min_interval_s:
            return
        body = {"at": now, "batches": self.batches, "worker": self.worker, "pid": os.getpid()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.path)
        self._written = now

    def before_batch(self, items: Sequence[WorkItem]) -> None:
        """Nothing to do before a batch."""

    def after_batch(
        self, items: Sequence[WorkItem], seconds: float, report: BatchReport | None = None
    ) -> None:
        self.batches += 1
        self.beat()
