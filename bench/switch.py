"""`scoring bench switch`: p99 latency across a promotion vs before it, in one process.

An in-process scorer (SQLite, demo v1 active and warm) takes a steady open-loop stream of
single requests. After `--before-s` seconds, v2 (served with `--backend`, `compiled` by
default, so its warm-up compiles every batch bucket) is promoted; the stream goes on
until `--after-s` seconds after the first v2 result. Each request's latency is submit →
stored (the scorer's after-batch hook). Two arms, each in a fresh scorer:

- `watcher`: what workers do now: the version watcher warms v2 on its own thread and the
  scorer cuts over between two micro-batches;
- `on-scorer`: what they did before: no watcher, the registry read once per batch, so the
  first batch that gets v2 loads and compiles it on the scorer thread.

The figure is each arm's p99 across the switch (requests submitted from the promotion to
the end) divided by its p99 before it.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer


def command(
    out: Path = typer.Option(Path("bench/results/switch.json"), "--out", help="JSON report."),
    backend: str = typer.Option("compiled", "--backend", help="v2's backend (its warm-up)."),
    rate: float = typer.Option(200.0, "--rate", help="Requests per second offered."),
    before_s: float = typer.Option(5.0, "--before-s", help="Seconds of stream before."),
    after_s: float = typer.Option(3.0, "--after-s", help="Seconds after the first v2 result."),
    torch_threads: int = typer.Option(1, "--torch-threads", help="torch threads."),
) -> None:
    """p99 latency across a promotion vs before it (warm-up off vs on the scorer thread)."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    from bench.machine import cpu_info
    from workers.runtime.heap import freeze_imported_heap
    from workers.runtime.models.demo.build import build_artifact

    torch.set_num_threads(torch_threads)
    freeze_imported_heap()  # what a worker process does before it loads any model
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifacts = (build_artifact(root / "a1", seed=0), build_artifact(root / "a2", seed=1))
        arms = []
        for arm in ("watcher", "on-scorer"):
            # Each arm compiles cold, in an inductor cache of its own: a version's first
            # compile on a host (the cache would otherwise make the second arm's shorter).
            with temporary_cache_dir(str(root / f"{arm}-inductor-cache")):
                arms.append(
                    _arm(
                        root / arm,
                        artifacts,
                        backend,
                        rate,
                        before_s,
                        after_s,
                        watcher=arm == "watcher",
                    )
                )
    report = {
        "benchmark": "switch",
        "machine": cpu_info(),
        "backend": backend,
        "rate_per_s": rate,
        "torch_threads": torch_threads,
        "arms": arms,
        "ratio_p99_across_vs_before": {a["arm"]: a["ratio_p99"] for a in arms},
    }
    text = json.dumps(report, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    typer.echo(text)


def _arm(
    root: Path,
    artifacts: tuple[Path, Path],
    backend: str,
    rate: float,
    before_s: float,
    after_s: float,
    watcher: bool,
) -> dict[str, Any]:
    from schemas.db import make_engine, upgrade
    from schemas.tables import utcnow
    from workers.core.pacing import ScorerActivity
    from workers.core.pipeline import PipelineConfig, ScoringPipeline
    from workers.core.service import ScoringService
    from workers.core.sink import ResultSink
    from workers.core.switch import VersionWatcher
    from workers.runtime import registry
    from workers.runtime.loaded import ModelCache
    from workers.runtime.models.demo.build import sample_rows
    from workers.sources.base import WorkItem

    root.mkdir(parents=True)
    url = f"sqlite:///{root / 'scoring.db'}"
    upgrade(url)
    engine = make_engine(url)
    v1 = registry.register(engine, root / "store", "demo", artifacts[0])
    registry.register(engine, root / "store", "demo", artifacts[1])
    registry.set_backend(engine, "demo", 2, backend)
    models = ModelCache()
    models.get(v1)
    scorer = ScorerActivity()
    versions = VersionWatcher(engine, models, scorer=scorer) if watcher else None
    if versions is not None:
        versions.prime({"demo": 1})
    pipeline = ScoringPipeline(
        engine, ResultSink(engine), models, PipelineConfig(worker="bench"), versions=versions
    )
    timing = _Timing()
    gc.callbacks.append(timing.gc_event)
    service = ScoringService(pipeline, 256, 0.01, hooks=[timing, scorer]).start()
    if versions is not None:
        versions.start()

    names, rows, _ = sample_rows(200, 0)
    payloads = [
        {"model": "demo", "inputs": {k: float(v) for k, v in zip(names, row, strict=True)}}
        for row in rows
    ]
    interval = 1 / rate
    sent = 0
    began = time.perf_counter()
    promoted_at: float | None = None
    while True:
        now = time.perf_counter()
        if promoted_at is None and now - began >= before_s:
            registry.promote(engine, "demo", 2)
            promoted_at = time.perf_counter()
        if timing.first_v2 is not None and now - timing.first_v2 >= after_s:
            break
        item = WorkItem(dict(payloads[sent % len(payloads)], request_id=f"b{sent}"), "redis")
        item.enqueued_at = utcnow()
        timing.submitted[item.payload["request_id"]] = time.perf_counter()
        service.submit([item])
        sent += 1
        delay = began + sent * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    service.close(120)
    gc.callbacks.remove(timing.gc_event)
    if versions is not None:
        versions.stop()
    engine.dispose()
    assert promoted_at is not None
    before = [lat for t, lat in timing.latencies if t < promoted_at]
    across = [lat for t, lat in timing.latencies if t >= promoted_at]
    p99_before, p99_across = _p99(before), _p99(across)
    return {
        "arm": "watcher" if watcher else "on-scorer",
        "requests": sent,
        "versions": sorted(timing.versions),
        "errors": timing.errors,
        "not_ok": timing.not_ok,
        "before": {"n": len(before), "p50_ms": _ms(_p50(before)), "p99_ms": _ms(p99_before)},
        "across": {
            "n": len(across),
            "p50_ms": _ms(_p50(across)),
            "p99_ms": _ms(p99_across),
            "max_ms": _ms(max(across)),
        },
        "promote_to_first_v2_s": round((timing.first_v2 or 0) - promoted_at, 3),
        "warm_s": round(versions.switches[0].warm_s, 3) if versions and versions.switches else None,
        # of warm_s, the watcher paused while the scorer was in a batch (workers/core/pacing.py)
        "paused_s": (
            round(versions.switches[0].paused_s, 3) if versions and versions.switches else None
        ),
        "ratio_p99": round(p99_across / p99_before, 2),
        # where the slow requests come from: garbage collections that stopped every
        # thread, and the half-second windows whose p50 was over twice the p50 before
        "gc_pauses": [
            {"at_s": round(t - promoted_at, 2), "ms": _ms(d), "generation": g, "thread": n}
            for t, d, g, n in timing.gc_pauses
        ],
        "slow_windows": _slow_windows(timing.latencies, promoted_at, 2 * _p50(before)),
    }


def _slow_windows(
    latencies: list[tuple[float, float]], promoted_at: float, over: float
) -> list[dict[str, Any]]:
    """Half-second windows (by submit time, from the promotion on) with p50 over `over`."""
    windows: dict[int, list[float]] = {}
    for sent, latency in latencies:
        if sent >= promoted_at:
            windows.setdefault(int((sent - promoted_at) * 2), []).append(latency)
    return [
        {"from_s": w / 2, "n": len(v), "p50_ms": _ms(_p50(v)), "max_ms": _ms(max(v))}
        for w, v in sorted(windows.items())
        if _p50(v) > over
    ]


class _Timing:
    """After-batch hook: submit → stored per request, and when v2 first answered."""

    def __init__(self) -> None:
        self.submitted: dict[str, float] = {}
        self.latencies: list[tuple[float, float]] = []
        self.first_v2: float | None = None
        self.versions: set[int] = set()
        self.errors = 0
        self.not_ok: list[dict[str, Any]] = []
        self.gc_pauses: list[tuple[float, float, int, str]] = []  # end, seconds, gen, thread
        self._gc_began = 0.0
        self._lock = threading.Lock()

    def gc_event(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks: collections over 20 ms (they hold the GIL: every thread waits)."""
        now = time.perf_counter()
        if phase == "start":
            self._gc_began = now
        elif now - self._gc_began > 0.02:
            name = threading.current_thread().name
            self.gc_pauses.append((now, now - self._gc_began, info["generation"], name))

    def before_batch(self, items: Any) -> None:
        pass

    def after_batch(self, items: Any, seconds: float, report: Any = None) -> None:
        done = time.perf_counter()
        for row in report.rows if report is not None else []:
            self.versions.add(row["model_version"])
            if row["status"] != "ok":
                self.errors += 1
                if len(self.not_ok) < 5:  # what went wrong, in the report
                    self.not_ok.append(
                        {k: row.get(k) for k in ("request_id", "status", "error", "model_version")}
                    )
            if row["model_version"] == 2 and self.first_v2 is None:
                self.first_v2 = done
            sent = self.submitted.get(row["request_id"])
            if sent is not None:
                self.latencies.append((sent, done - sent))


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
