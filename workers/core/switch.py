"""Promotion without a gap: a watcher thread warms a newly active version beside the old.

The watcher polls the registry's active versions (one cheap query every `poll_s`). When a
model's active version differs from the one the scorer serves (a promote or a rollback),
it loads and warms the new version on its own thread, through the process's ModelCache,
while the scorer keeps serving the old one (the warm-up pausing while the scorer is in a
batch: workers/core/pacing.py). Only then does it offer the switch; the
scorer takes it at the start of its next micro-batch (`begin_batch`), so a switch always
falls between two micro-batches, and no request waits for a warm-up or meets a
half-loaded model. The old version is released after the switch, unless requests still
name it by number.

A version that cannot load or warm up is logged (and counted by the cache's listener);
the scorer keeps serving the old version, and the watcher does not try that version
again until the registry changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine

from schemas.redaction import redact, url_password
from workers.core.pacing import ScorerActivity, giving_way_to
from workers.runtime import registry
from workers.runtime.loaded import ModelCache

log = logging.getLogger(__name__)

POLL_S = 2.0
# a version a request named by number within this many seconds stays loaded after a switch
KEEP_NAMED_S = 300.0


@dataclass
class Switch:
    """One cut-over of a model from `old` to `new` in this process."""

    name: str
    old: int
    new: int
    warm_s: float  # loading and warming `new`, on the watcher's thread
    paused_s: float = 0.0  # of warm_s, paused while the scorer was in a batch
    last_batch_before: str | None = None  # batch_id of the last model call of `old`
    first_batch_after: str | None = None  # batch_id of the first model call of `new`
    taken_at: float | None = None  # time.time() when the scorer took it


class SwitchListener(Protocol):
    def model_switched(self, name: str, old: int, new: int) -> None: ...


# While a version warms up (a compile is seconds of Python holding the GIL), the watcher
# thread pauses while the scorer is in a batch (workers/core/pacing.py), the interpreter
# offers the GIL to the scorer every 20 µs instead of every 5 ms, and the watcher thread
# (and the compiler processes it starts) runs at the lowest CPU priority. `scoring bench
# switch` measured the scorer's p99 across a compiled warm-up at 17x its p99 before with
# none of these, about 2x with the last two, 1.2-1.5x with all three (docs/BENCHMARKS.md).
WARM_UP_SWITCH_INTERVAL_S = 20e-6
WATCHER_NICE = 19


@contextlib.contextmanager
def scorer_first() -> Iterator[None]:
    """The GIL handed over often for the duration (the scorer thread waits less for it)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(WARM_UP_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def lowest_priority() -> None:
    """This thread (Linux threads have their own nice value) and what it starts, last."""
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), WATCHER_NICE)
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: only slower switches
        log.debug("could not lower the version watcher's priority")


class VersionWatcher:
    """The versions the scorer serves for requests naming none, kept up to date off the
    scorer thread. `start()` runs the polling thread; `begin_batch()` is the scorer's."""

    def __init__(
        self,
        engine: Engine,
        models: ModelCache,
        poll_s: float = POLL_S,
        listener: SwitchListener | None = None,
        keep_named_s: float = KEEP_NAMED_S,
        scorer: ScorerActivity | None = None,
    ) -> None:
        self.engine = engine
        self.models = models
        self.poll_s = poll_s
        self.listener = listener
        self.keep_named_s = keep_named_s
        self.scorer = scorer  # the warm-up pauses while it scores a batch
        self.switches: list[Switch] = []  # taken, oldest first
        self.warming: dict[str, int] = {}  # name -> version being loaded now
        self._serving: dict[str, int] = {}
        self._pending: dict[str, Switch] = {}
        self._failed: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the scorer's side -------------------------------------------------------------

    def begin_batch(self) -> tuple[dict[str, int], list[Switch]]:
        """Take any warmed-up switch; the versions this batch serves, and the switches
        taken now (the scorer logs them once it knows the batch ids)."""
        with self._lock:
            taken = list(self._pending.values())
            self._pending.clear()
            for switch in taken:
                self._serving[switch.name] = switch.new
                switch.taken_at = time.time()
            self.switches += taken
            serving = dict(self._serving)
        for switch in taken:
            if self.models.release(switch.name, switch.old, self.keep_named_s):
                log.info("released %s v%d", switch.name, switch.old)
            if self.listener is not None:
                try:
                    self.listener.model_switched(switch.name, switch.old, switch.new)
                except Exception:  # noqa: BLE001 - a listener never fails a batch
                    log.exception("switch listener failed")
        return serving, taken

    def serving(self, name: str) -> int | None:
        with self._lock:
            return self._serving.get(name)

    # -- the watcher's side ------------------------------------------------------------

    def prime(self, versions: dict[str, int]) -> None:
        """Serve these (loaded, warm) versions from now on: the worker's start-up."""
        with self._lock:
            for name, version in versions.items():
                self._serving.setdefault(name, version)

    def start(self) -> VersionWatcher:
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        lowest_priority()
        failing = False
        while not self._stop.is_set():
            try:
                self.poll()
                if failing:
                    log.info("reading the active versions again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - the watcher outlives a database outage
                if not failing:  # one line per outage, no traceback (it may hold a URL)
                    url = self.engine.url.render_as_string(hide_password=False)
                    reason = redact(
                        str(exc).splitlines()[0] if str(exc) else "", [url_password(url)]
                    )
                    log.warning(
                        "cannot read the active versions (%s: %s); will retry",
                        type(exc).__name__,
                        reason,
                    )
                failing = True
            self._stop.wait(self.poll_s)

    def poll(self) -> None:
        """One look at the registry: warm up every newly active version, then offer it."""
        for name, version in registry.active_versions(self.engine).items():
            with self._lock:
                serving = self._serving.get(name)
                pending = self._pending.get(name)
                if version == serving:
                    self._failed = {f for f in self._failed if f[0] != name}
                    if pending is not None:  # rolled back before the switch: never taken
                        del self._pending[name]
                        self.models.release(name, pending.new, self.keep_named_s)
                    continue
                if pending is not None and pending.new == version:
                    continue
            if (name, version) in self._failed:
                continue
            self._warm(name, version, serving)

    def _warm(self, name: str, version: int, serving: int | None) -> None:
        began = time.perf_counter()
        self.warming[name] = version
        try:
            record = registry.get_version(self.engine, name, version)
            with scorer_first(), giving_way_to(self.scorer) as pacer:
                self.models.get(record)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            self._failed.add((name, version))
            log.error(
                "%s v%d cannot load or warm up here (%s: %s); still serving v%s",
                name,
                version,
                type(exc).__name__,
                exc,
                serving,
            )
            return
        finally:
            self.warming.pop(name, None)
        warm_s = time.perf_counter() - began
        paused_s = pacer.paused_s if pacer is not None else 0.0
        how = f"warmed up in {warm_s:.2f} s, paused {paused_s:.2f} s for the scorer"
        with self._lock:
            if serving is None:  # a model this process did not serve yet: no cut-over
                self._serving.setdefault(name, version)
                log.info("now serving %s v%d (%s)", name, version, how)
                return
            self._pending[name] = Switch(name, serving, version, warm_s, paused_s)
        log.info("%s v%d %s; switching from v%d", name, version, how, serving)
