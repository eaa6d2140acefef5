"""The scoring core of one process: engine, result sink, model cache, pipeline, scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.db import make_engine
from schemas.settings import Settings
from workers.core.pipeline import PipelineConfig, ScoringPipeline
from workers.core.service import ScoringService
from workers.core.sink import ResultSink
from workers.hooks.heartbeat import Heartbeat
from workers.runtime.loaded import ModelCache, pick_device
from workers.sources.base import WorkItem


@dataclass
class CoreContext:
    pipeline: ScoringPipeline
    service: ScoringService


def build_context(
    settings: Settings, dead_letter: Callable[[WorkItem], None], worker: str
) -> CoreContext:
    """Connect and start the scorer thread; call in the process that will score."""
    if settings.runtime.torch_threads:
        import torch

        torch.set_num_threads(settings.runtime.torch_threads)
    db = settings.database
    engine = make_engine(db.sqlalchemy_url())
    sink = ResultSink(engine, db.retries, db.retry_backoff_s)
    pipeline = ScoringPipeline(
        engine,
        sink,
        ModelCache(pick_device()),
        PipelineConfig(
            worker=worker,
            max_text_chars=settings.limits.max_text_chars,
            max_metadata_bytes=settings.limits.max_metadata_bytes,
            dead_letter=dead_letter,
        ),
    )
    batching = settings.batching
    hooks = []
    if settings.runtime.heartbeat_dir is not None:
        settings.runtime.heartbeat_dir.mkdir(parents=True, exist_ok=True)
        beat = Heartbeat(settings.runtime.heartbeat_dir / f"{worker}.json", worker)
        hooks.append(beat)
    service = ScoringService(
        pipeline, batching.max_batch_size, batching.max_wait_ms / 1000, hooks=hooks
    )
    return CoreContext(pipeline, service.start())
