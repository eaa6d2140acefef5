"""The scorer first: a warm-up on another thread pauses while a micro-batch is scored.

A compile is Python holding the GIL. While the version watcher compiles a promoted
version, the scorer waits for the GIL again after every call that released it (each torch
op, each database call), and its batches take two to three times as long (`scoring bench
switch`). Here the scorer marks each batch (`ScorerActivity`, a batch hook), and the
warming thread runs a profile function (`sys.setprofile`: that thread only) that waits,
the GIL released, while a batch is being scored.

Two bounds keep a pause from stalling either side. The scorer may need a lock the warming
thread holds: it never pauses inside a torch.fx trace (trace_guard.LOCK, which the
scorer's model calls wait for), and it waits at most `MAX_PAUSE_S` per batch for
anything else. And a scorer busy without a break must not starve the warm-up: the
warming thread spends at most `MAX_SHARE` of its time paused.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from workers.runtime import trace_guard

MAX_PAUSE_S = 0.1  # the longest wait for one batch (a lock held across it costs this)
MAX_SHARE = 0.8  # of the warming thread's time, at most, spent paused


class ScorerActivity:
    """A batch hook that tells other threads whether the scorer is inside a batch."""

    def __init__(self) -> None:
        self.batches = 0  # batches begun, to wait once per batch
        # read by the profile function on every call the warming thread makes: a plain
        # attribute, not the Event's is_set()
        self.busy = False
        self._idle = threading.Event()
        self._idle.set()

    def before_batch(self, items: Sequence[Any]) -> None:
        self.batches += 1
        self._idle.clear()
        self.busy = True

    def after_batch(self, items: Sequence[Any], seconds: float, report: Any = None) -> None:
        self.busy = False
        self._idle.set()

    def wait_idle(self, timeout: float) -> None:
        self._idle.wait(timeout)


class Pacer:
    """The profile function of a thread that gives way to the scorer."""

    def __init__(
        self, scorer: ScorerActivity, max_pause_s: float = MAX_PAUSE_S, max_share: float = MAX_SHARE
    ) -> None:
        self.scorer = scorer
        self.max_pause_s = max_pause_s
        self.max_share = max_share
        self.began = time.monotonic()
        self.paused_s = 0.0
        self.pauses = 0
        self._waited_for = -1

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        scorer = self.scorer
        if not scorer.busy or scorer.batches == self._waited_for:
            return
        if trace_guard.held_here():
            return
        self._waited_for = scorer.batches
        now = time.monotonic()
        if self.paused_s > self.max_share * (now - self.began):
            return
        scorer.wait_idle(self.max_pause_s)
        self.paused_s += time.monotonic() - now
        self.pauses += 1


@contextlib.contextmanager
def giving_way_to(scorer: ScorerActivity | None, **bounds: float) -> Iterator[Pacer | None]:
    """While inside, this thread pauses whenever `scorer` is in a batch (None: never).
    `bounds`: Pacer's max_pause_s and max_share."""
    if scorer is None:
        yield None
        return
    pacer = Pacer(scorer, **bounds)
    previous = sys.getprofile()
    sys.setprofile(pacer)
    try:
        yield pacer
    finally:
        sys.setprofile(previous)
