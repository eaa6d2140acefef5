"""Out of memory in a model call: split the call and retry, and batch that version smaller.

A model call that runs out of memory (torch's `OutOfMemoryError`, or a RuntimeError /
MemoryError from an allocator that says so) is not the fault of any request in it: the
batch was too large for the memory the device had. The pipeline then frees what it can
(the CUDA caching allocator's unused blocks), splits the call in halves and retries each,
recursively, so every request is scored and none gets an `error` row for it.

`BatchLimits` remembers, per (model, version) and in memory until the process restarts,
the largest call that fitted: later micro-batches of that version are cut at it (by the
pipeline, and by the batcher through `ScoringPipeline.limits_of`), and one warning line
is logged per lowering. Sizes are counted as the rows the runner sees: a compiled
backend pads a call up to a batch bucket (workers/runtime/backends.py), so its lowered
limit is always one of the buckets it was warmed up on, and a halved call that would pad
back up to a size that just ran out is split further without being tried. Nothing new is
ever compiled.

A single row that still runs out of memory on its own gets an `error` row, "out of
memory even alone (batch of 1): ...", rather than being sent back. Nothing smaller can
be tried, so it is either that request (a text at the length limit, say) or a version
that does not fit this device at all, and redelivery fixes neither: on Kafka a rewind
would hold its partition behind it forever, on Redis it would be re-queued until its
attempts run out and then dead-lettered without any result. An `error` row answers the
request with the reason, lets the rest of the batch be acknowledged, and is counted by
the error-rate alert; the caller can submit it again once the cause is fixed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from workers.runtime.backends import COMPILED, bucket_for, buckets

log = logging.getLogger(__name__)

# torch >= 2.5 has torch.OutOfMemoryError (CUDA, and other devices); older: torch.cuda's.
OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# What allocators put in a RuntimeError when they cannot allocate (CUDA: "CUDA out of
# memory", CPU: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ...").
_MESSAGES = ("out of memory", "can't allocate memory")

ALONE = "out of memory even alone (batch of 1)"


class Sized(Protocol):
    """What a limit is kept for: a loaded model version (workers.runtime.loaded)."""

    name: str
    version: int
    backend: str
    max_batch_size: int


def is_out_of_memory(exc: BaseException) -> bool:
    """The exception says the call ran out of memory (not that a request is bad)."""
    if isinstance(exc, (OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _MESSAGES)


def free_memory() -> None:
    """Give the CUDA caching allocator's unused blocks back (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # does nothing where this process never used CUDA


def call_rows(model: Sized, n: int) -> int:
    """The rows the runner sees for `n` inputs: compiled backends pad to a bucket."""
    return bucket_for(n, model.max_batch_size) if model.backend in COMPILED else n


def below(model: Sized, rows: int) -> int:
    """The largest call size under `rows` that the version can run (at least 1)."""
    if model.backend in COMPILED:
        return max([b for b in buckets(model.max_batch_size) if b < rows], default=1)
    return max(1, rows - 1)


class BatchLimits:
    """Batch sizes lowered after running out of memory, by (model, version), kept until
    the process restarts. Written by the scorer thread; read from any (copy on write)."""

    def __init__(self) -> None:
        self._lowered: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def limit(self, model: Sized) -> int:
        """The most rows one call of this version may hold: its max_batch_size, or less."""
        lowered = self._lowered.get((model.name, model.version))
        return model.max_batch_size if lowered is None else min(lowered, model.max_batch_size)

    def lowered(self) -> dict[tuple[str, int], int]:
        """Every version whose limit was lowered, with that limit."""
        return dict(self._lowered)

    def lower(self, model: Sized, size: int, ran_out: int) -> bool:
        """Cut this version's calls at `size` rows from now on (a call of `ran_out` rows
        ran out of memory); True, and one warning, if that is below its limit."""
        key = (model.name, model.version)
        with self._lock:
            old = self.limit(model)
            if size >= old:
                return False
            self._lowered = {**self._lowered, key: size}
        log.warning(
            "out of memory: %s v%d batch limit %d -> %d rows until restart "
            "(a call of %d rows ran out; backend %s)",
            model.name,
            model.version,
            old,
            size,
            ran_out,
            model.backend,
        )
        return True

    @contextmanager
    def search(self, model: Sized) -> Iterator[Fit]:
        """One logical model call and the retries it takes; on exit, the version's limit
        is lowered to the largest call that fitted if any part of it ran out."""
        fit = Fit(model)
        try:
            yield fit
        finally:
            if fit.ran_out_at is not None:
                self.lower(model, fit.new_limit(), fit.ran_out_at)


class Fit:
    """What one model call and its retries learnt: the smallest call of two rows or more
    (in runner rows) that ran out of memory, and the largest that fitted."""

    def __init__(self, model: Sized) -> None:
        self.model = model
        self.ran_out_at: int | None = None
        self.fitted = 0

    def worth_trying(self, n: int, ceiling: int | None) -> bool:
        """False when a call of `n` rows would run as many rows as `ceiling`, the call
        it was split from that ran out (a compiled backend pads 64 rows back up to 128)."""
        return n == 1 or ceiling is None or call_rows(self.model, n) < ceiling

    def succeeded(self, n: int) -> None:
        self.fitted = max(self.fitted, call_rows(self.model, n))

    def ran_out(self, n: int) -> int:
        """A call of `n` inputs ran out of memory: free what can be freed, and return the
        rows it ran (its halves must run fewer). Call it once the exception is handled,
        so that the tensors its frames held are gone too. A single row that runs out is
        not counted: it may be that request's own doing (it gets an error row)."""
        rows = call_rows(self.model, n)
        if n > 1:
            self.ran_out_at = rows if self.ran_out_at is None else min(self.ran_out_at, rows)
        free_memory()
        return rows

    def new_limit(self) -> int:
        """The largest call that fitted; when none did, the next size below the smallest
        that ran out."""
        assert self.ran_out_at is not None
        return self.fitted or below(self.model, self.ran_out_at)
