"""The scoring core of one process: engine, result sink, model cache, pipeline, scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.db import make_engine
from schemas.settings import Settings
from workers.core.pacing import ScorerActivity
from workers.core.pipeline import PipelineConfig, ScoringPipeline
from workers.core.service import ScoringService
from workers.core.sink import ResultSink
from workers.core.switch import VersionWatcher
from workers.hooks import BatchHook
from workers.hooks.drift_metrics import from_database
from workers.hooks.heartbeat import Heartbeat
from workers.hooks.metrics import WorkerMetrics
from workers.runtime.heap import freeze_imported_heap
from workers.runtime.loaded import ModelCache, pick_device
from workers.sources.base import WorkItem


@dataclass
class CoreContext:
    pipeline: ScoringPipeline
    service: ScoringService
    metrics: WorkerMetrics | None = None  # served on SCORING_METRICS_PORT when set
    watcher: VersionWatcher | None = None  # warms promoted versions off the scorer thread

    def close(self) -> None:
        """Finish what is queued, stop serving metrics, release the database."""
        if self.watcher is not None:
            self.watcher.stop()
        self.service.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.pipeline.engine.dispose()


def build_context(
    settings: Settings, dead_letter: Callable[[WorkItem], None], worker: str
) -> CoreContext:
    """Connect and start the scorer thread; call in the process that will score."""
    if settings.runtime.torch_threads:
        import torch

        torch.set_num_threads(settings.runtime.torch_threads)
    if settings.runtime.freeze_heap:
        freeze_imported_heap()  # before any model is loaded: models must stay collectable
    metrics = _metrics(settings, worker)
    db = settings.database
    engine = make_engine(db.sqlalchemy_url(), db.idle_in_transaction_timeout_s)
    if metrics is not None:  # drift and accuracy gauges, read from the database on scrape
        metrics.add_drift(from_database(engine))
    sink = ResultSink(engine, db.retries, db.retry_backoff_s)
    models = ModelCache(pick_device(), listener=metrics)
    scorer = ScorerActivity()  # the watcher's warm-ups give way to its batches
    watcher = VersionWatcher(engine, models, listener=metrics, scorer=scorer)
    pipeline = ScoringPipeline(
        engine,
        sink,
        models,
        PipelineConfig(
            worker=worker,
            max_text_chars=settings.limits.max_text_chars,
            max_metadata_bytes=settings.limits.max_metadata_bytes,
            retain_inputs=settings.limits.retain_inputs,
            max_request_bytes=settings.limits.max_request_bytes,
            dead_letter=dead_letter,
        ),
        versions=watcher,
    )
    batching = settings.batching
    hooks: list[BatchHook] = [metrics] if metrics is not None else []
    if settings.runtime.heartbeat_dir is not None:
        settings.runtime.heartbeat_dir.mkdir(parents=True, exist_ok=True)
        beat = Heartbeat(settings.runtime.heartbeat_dir / f"{worker}.json", worker)
        hooks.append(beat)
    service = ScoringService(
        pipeline, batching.max_batch_size, batching.max_wait_ms / 1000, hooks=[*hooks, scorer]
    )
    # the watcher thread starts with the scorer: its first poll loads what is active
    # (at worker start, `WorkerProcess.warm_up` has that done already)
    return CoreContext(pipeline, service.start(), metrics, watcher.start())


def _metrics(settings: Settings, worker: str) -> WorkerMetrics | None:
    """The process's metrics, served on SCORING_METRICS_PORT; None when it is unset. A
    port already taken (another process on this host) stops the process at start."""
    port = settings.runtime.metrics_port
    if port is None:
        return None
    metrics = WorkerMetrics(worker, settings.broker)
    try:
        metrics.serve(port)
    except OSError as exc:
        raise OSError(
            f"SCORING_METRICS_PORT={port} cannot be served ({exc}): another process on this "
            "host has it; give each process its own port (`scoring worker` gives its N "
            "processes port ... port + N - 1)"
        ) from exc
    return metrics
