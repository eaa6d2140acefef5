"""One scorer per worker process: every source hands it items; it batches and scores them.

Sources (the Celery batch task, the Kafka consumer) call `submit` and wait on the ticket;
a single thread owns the model, forms micro-batches with `next_batch` (stream items first
when both wait), runs the pipeline and reports each item's outcome back.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence

from schemas import names
from workers.core.batcher import STOP, Stop, next_batch
from workers.core.pipeline import ScoringPipeline
from workers.core.sink import SinkUnavailable
from workers.hooks import BatchHook, BatchReport
from workers.sources.base import Outcome, WorkItem

log = logging.getLogger(__name__)

# Lower sorts first: stream items ahead of Redis/bulk items when both wait.
SOURCE_PRIORITY = {names.SOURCE_KAFKA: 0, names.SOURCE_REDIS: 1, names.SOURCE_BULK: 2}


class Ticket:
    """Completion of one submit() call: wait() returns when every item has an outcome."""

    def __init__(self, items: list[WorkItem]) -> None:
        self.items = items
        self._left = len(items)
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not items:
            self._done.set()

    def _finish(self, n: int) -> None:
        with self._lock:
            self._left -= n
            if self._left <= 0:
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class ScoringService:
    """Owns the pipeline's thread; `submit` is safe to call from any thread."""

    def __init__(
        self,
        pipeline: ScoringPipeline,
        max_batch_size: int,
        max_wait_s: float,
        hooks: Sequence[BatchHook] = (),
    ) -> None:
        self.pipeline = pipeline
        self.hooks = list(hooks)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.PriorityQueue[tuple[int, int, object]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> ScoringService:
        self._thread = threading.Thread(target=self._run, name="scorer", daemon=True)
        self._thread.start()
        return self

    def submit(self, items: Iterable[WorkItem]) -> Ticket:
        ticket = Ticket(list(items))
        for item in ticket.items:
            item.token = (ticket, item.token)
            self._queue.put((SOURCE_PRIORITY.get(item.source, 9), next(self._seq), item))
        return ticket

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put((99, next(self._seq), STOP))
        if self._thread:
            self._thread.join(timeout)

    def _receive(self, timeout: float | None) -> WorkItem | Stop | None:
        if self._stopped:
            return STOP
        try:
            _, _, item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Stop):
            self._stopped = True
            return STOP
        return item  # type: ignore[return-value]

    def _run(self) -> None:
        while batch := next_batch(
            self._receive,
            self.max_batch_size,
            self.max_wait_s,
            size=lambda item: item.size,
            limits=self._limits,
        ):
            self._score(batch)

    def _limits(self, item: WorkItem) -> tuple[int, float] | None:
        """The item's version's own max_batch_size and max_wait_s, where tighter."""
        lookup = getattr(self.pipeline, "limits_of", None)  # fakes have none
        return lookup(item, self.max_batch_size, self.max_wait_s) if lookup else None

    def _score(self, batch: list[WorkItem]) -> None:
        self._call_hooks("before_batch", batch)
        started = time.perf_counter()
        try:
            self.pipeline.process(batch)
        except SinkUnavailable as exc:
            log.error("batch of %d not stored, will be redelivered: %s", len(batch), exc)
            _mark_retry(batch, str(exc))
        except Exception as exc:  # noqa: BLE001 - the scorer thread must survive anything
            log.exception("batch of %d failed unexpectedly", len(batch))
            _mark_retry(batch, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        report: BatchReport | None = getattr(self.pipeline, "report", None)  # fakes keep none
        self._call_hooks("after_batch", batch, seconds, report)
        for item in batch:
            ticket, original = item.token
            item.token = original
            ticket._finish(1)

    def _call_hooks(self, name: str, *args: object) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:  # noqa: BLE001 - a hook never fails a batch
                log.exception("batch hook %s.%s failed", type(hook).__name__, name)


def _mark_retry(batch: list[WorkItem], reason: str) -> None:
    """Nothing of the batch was stored: every item not already dead-lettered goes back."""
    for item in batch:
        if item.outcome is not Outcome.DEAD:
            item.outcome, item.reason = Outcome.RETRY, reason
