"""Per-process worker state, built after any fork: engine, model cache, pipeline, scorer."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from schemas.db import make_engine
from scoring.settings import Settings
from workers import registry
from workers.pipeline import PipelineConfig, ScoringPipeline, WorkItem
from workers.runtime import ModelCache, pick_device
from workers.service import ScoringService
from workers.sink import ResultSink

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    pipeline: ScoringPipeline
    service: ScoringService

    def warm_up(self) -> list[str]:
        """Load (and warm up: see ModelCache) every active version now, so the first
        request pays no load or compile time."""
        loaded = []
        for name, version in registry.active_versions(self.pipeline.engine).items():
            model = self.pipeline.models.get(
                registry.get_version(self.pipeline.engine, name, version)
            )
            loaded.append(f"{model.name} v{model.version} ({model.backend} on {model.device})")
        return loaded

    def close(self) -> None:
        self.service.close()
        self.pipeline.engine.dispose()


def build_context(
    settings: Settings, dead_letter: Callable[[WorkItem], None], worker_name: str | None = None
) -> WorkerContext:
    """Connect and start the scorer thread; call in the process that will score."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = make_engine(settings.database_url)
    sink = ResultSink(engine, settings.db_retries, settings.db_retry_backoff_s)
    name = (
        worker_name
        or os.environ.get("SCORING_WORKER_NAME")
        or (f"{os.getpid()}@{socket.gethostname()}")
    )
    pipeline = ScoringPipeline(
        engine,
        sink,
        ModelCache(pick_device()),
        PipelineConfig(
            worker=name, max_text_chars=settings.max_text_chars, dead_letter=dead_letter
        ),
    )
    service = ScoringService(pipeline, settings.max_batch_size, settings.max_wait_ms / 1000)
    return WorkerContext(settings, pipeline, service.start())


class LazyContext:
    """Builds the context on first use in this process, once, thread-safely."""

    def __init__(self, factory: Callable[[], WorkerContext]) -> None:
        self._factory = factory
        self._context: WorkerContext | None = None
        self._lock = threading.Lock()

    def get(self) -> WorkerContext:
        if self._context is None:
            with self._lock:
                if self._context is None:
                    self._context = self._factory()
        return self._context

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
