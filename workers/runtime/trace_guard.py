"""Model calls that survive a torch.fx trace on another thread.

While `torch.fx` symbolically traces, it replaces `torch.nn.Module.__call__` and
`__getattr__` for the whole process (torch/fx/_symbolic_trace.py), and inductor traces
during every compile (torch/_inductor/loop_body.py). A model called on the scorer thread
while the version watcher compiles the next version then fails with
`NameError: module is not installed as a submodule`, and its requests got `error` rows
(found by `scoring bench switch`). The patched `__call__` always fails that way before
the model computes anything, so the call is safe to repeat: a trace holds `LOCK` while it
runs, and a call that failed so waits for it and runs again. Model calls never hold the
lock, so a trace never waits for inference, and nothing here can deadlock with torch's
own compile lock.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch.fx

LOCK = threading.RLock()
_here = threading.local()  # .depth: traces this thread is inside
MESSAGE = "module is not installed as a submodule"
ATTEMPTS = 20  # traces in a row a call may meet (inductor traces many small functions)


def install() -> None:
    """Make every torch.fx trace hold LOCK (once per process)."""
    trace = torch.fx.Tracer.trace
    if getattr(trace, "_holds_trace_lock", False):
        return

    @functools.wraps(trace)
    def locked(self: torch.fx.Tracer, *args: Any, **kwargs: Any) -> Any:
        with LOCK:
            _here.depth = getattr(_here, "depth", 0) + 1
            try:
                return trace(self, *args, **kwargs)
            finally:
                _here.depth -= 1

    locked._holds_trace_lock = True  # type: ignore[attr-defined]
    torch.fx.Tracer.trace = locked  # type: ignore[method-assign]


def held_here() -> bool:
    """Whether this thread is inside a trace (and holds LOCK)."""
    return getattr(_here, "depth", 0) > 0


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, run again after any trace on another thread that broke it."""
    for attempt in range(ATTEMPTS):
        try:
            return fn(*args)
        except NameError as exc:
            if str(exc) != MESSAGE or attempt == ATTEMPTS - 1:
                raise
            with LOCK:  # the trace that patched Module.__call__ is over once we get it
                pass
    raise AssertionError("unreachable")  # pragma: no cover


install()
