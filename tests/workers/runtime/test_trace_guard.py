"""A model called while torch.fx traces on another thread (inductor does during every
compile) is scored, not failed with NameError."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from workers.runtime import trace_guard


class SlowToTrace(torch.nn.Module):
    """Its forward waits inside the trace, so the trace is in progress meanwhile."""

    def __init__(self, tracing: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.tracing, self.release = tracing, release

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tracing.set()
        self.release.wait(10)
        return x + 1


def trace_in_background() -> tuple[threading.Thread, threading.Event]:
    tracing, release = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=torch.fx.symbolic_trace, args=(SlowToTrace(tracing, release),), daemon=True
    )
    thread.start()
    assert tracing.wait(10)
    return thread, release


def test_a_plain_model_call_fails_while_another_thread_traces() -> None:
    """The hazard itself (torch's behaviour): without the guard the call raises."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    thread, release = trace_in_background()
    try:
        with pytest.raises(NameError, match=trace_guard.MESSAGE):
            model(torch.ones(1, 3))
    finally:
        release.set()
        thread.join(10)


def test_a_guarded_call_waits_for_the_trace_and_scores() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    expected = model(torch.ones(1, 3))
    thread, release = trace_in_background()
    threading.Timer(0.2, release.set).start()  # the trace ends a moment later
    started = time.monotonic()
    try:
        got = trace_guard.call(model, torch.ones(1, 3))
    finally:
        release.set()
        thread.join(10)
    assert torch.equal(got, expected)
    assert time.monotonic() - started >= 0.15  # it waited for the trace, then ran


def test_other_name_errors_are_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise NameError("name 'x' is not defined")

    with pytest.raises(NameError, match="'x'"):
        trace_guard.call(broken)
    assert calls == [1]
