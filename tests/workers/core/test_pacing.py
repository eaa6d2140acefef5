"""A warm-up thread gives way to the scorer: it pauses while a batch is scored, never
inside a torch.fx trace (the scorer's model calls wait for those), and never for long
enough to stall or starve."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from tests.helpers import wait_for
from workers.core.pacing import Pacer, ScorerActivity, giving_way_to


class Work:
    """Python work on a thread of its own (every call a profile event), counted."""

    def __init__(self, scorer: ScorerActivity | None, traced: bool = False, **bounds: float):
        self.count = 0
        self.pacer: Pacer | None = None
        self.scorer, self.bounds, self.traced = scorer, bounds, traced
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        self.count += 1

    def loop(self) -> None:
        while not self.stop.is_set():
            self.step()

    def _run(self) -> None:
        with giving_way_to(self.scorer, **self.bounds) as pacer:
            self.pacer = pacer
            if self.traced:  # the loop runs inside a torch.fx trace
                torch.fx.symbolic_trace(SlowToTrace(self))
            else:
                self.loop()


@contextmanager
def running(work: Work) -> Iterator[Work]:
    work.thread.start()
    wait_for(lambda: work.count > 1000, timeout=10, every=0.01)
    try:
        yield work
    finally:
        work.stop.set()
        work.thread.join(10)


def progress(work: Work, during: Callable[[], None]) -> int:
    before = work.count
    during()
    return work.count - before


def test_the_warming_thread_pauses_while_the_scorer_is_in_a_batch_and_resumes_after() -> None:
    scorer = ScorerActivity()
    with running(Work(scorer, max_pause_s=30)) as work:
        scorer.before_batch([])
        wait_for(lambda: work.pacer is not None and work.pacer.pauses == 0 and _waiting(work))
        assert progress(work, lambda: time.sleep(0.2)) == 0
        scorer.after_batch([], 0.0)
        assert progress(work, lambda: time.sleep(0.05)) > 0
    assert work.pacer is not None and work.pacer.pauses == 1
    assert work.pacer.paused_s >= 0.2


def _waiting(work: Work) -> bool:
    """The worker's count stands still (it is inside the pause)."""
    before = work.count
    time.sleep(0.02)
    return work.count == before


def test_a_pause_ends_after_max_pause_and_the_same_batch_is_not_waited_for_twice() -> None:
    scorer = ScorerActivity()
    with running(Work(scorer, max_pause_s=0.1)) as work:
        scorer.before_batch([])  # a batch that outlasts the bound (a lock held across it)
        wait_for(lambda: work.pacer is not None and work.pacer.pauses == 1, timeout=10)
        assert progress(work, lambda: time.sleep(0.3)) > 0
        scorer.after_batch([], 0.0)
    assert work.pacer is not None and work.pacer.pauses == 1


def test_a_scorer_busy_without_a_break_does_not_starve_the_warm_up() -> None:
    scorer = ScorerActivity()
    stop = threading.Event()

    def back_to_back() -> None:
        while not stop.is_set():
            scorer.before_batch([])
            time.sleep(0.01)
            scorer.after_batch([], 0.01)

    busy = threading.Thread(target=back_to_back, daemon=True)
    with running(Work(scorer, max_pause_s=1.0, max_share=0.5)) as work:
        busy.start()
        time.sleep(1.0)
        stop.set()
        busy.join(10)
    assert work.pacer is not None and work.pacer.pauses > 10
    elapsed = time.monotonic() - work.pacer.began
    assert work.pacer.paused_s <= 0.5 * elapsed + 0.05  # one pause may begin just under it


class SlowToTrace(torch.nn.Module):
    """Its forward runs Python until told to stop, inside a torch.fx trace."""

    def __init__(self, work: Work) -> None:
        super().__init__()
        self.work = work

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.work.loop()
        return x + 1


def test_the_warming_thread_never_pauses_inside_a_trace() -> None:
    scorer = ScorerActivity()
    with running(Work(scorer, traced=True, max_pause_s=30)) as work:
        scorer.before_batch([])
        assert progress(work, lambda: time.sleep(0.2)) > 0
        scorer.after_batch([], 0.0)
    assert work.pacer is not None and work.pacer.pauses == 0


def test_without_a_scorer_nothing_is_installed() -> None:
    with giving_way_to(None) as pacer:
        assert pacer is None
