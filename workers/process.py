"""One worker process, wired: its settings, one model cache, one scorer, and its sources.

Nothing here runs at import: a process is built after any fork. `WorkerProcess.start()`
connects to the database, starts the scorer thread, and loads and warms up every active
version; a version that cannot load or warm up stops the process, with the reason,
before it consumes a single message. `python -m workers.process` is what the launcher
runs in each child process (the CLI is never imported there).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, signals

from schemas import names
from schemas.settings import RuntimeSettings, Settings
from workers.sources.base import WorkItem

log = logging.getLogger(__name__)


class WarmUpError(RuntimeError):
    """An active version cannot load or warm up here; the message says what to do."""


def worker_name(runtime: RuntimeSettings) -> str:
    """This process's name in lineage and Celery: `cpu0@host` (the host tells scaled
    containers and machines apart)."""
    base = runtime.worker_name or f"w{os.getpid()}"
    return base if "@" in base else f"{base}@{socket.gethostname()}"


class DeadLetterRouter:
    """The pipeline's dead-letter callback: each item goes to the source it came from."""

    def __init__(self) -> None:
        self._by_source: dict[str, Callable[[WorkItem], None]] = {}

    def route(self, sources: Iterable[str], dead_letter: Callable[[WorkItem], None]) -> None:
        for source in sources:
            self._by_source[source] = dead_letter

    def __call__(self, item: WorkItem) -> None:
        target = self._by_source.get(item.source)
        if target is None:
            log.error("dead letter from %s with no source to park it: %s", item.source, item.reason)
            return
        target(item)


class WorkerProcess:
    """The scoring state of one process; `scorer()` is safe to call from any thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = worker_name(settings.runtime)
        self.dead_letters = DeadLetterRouter()
        self._context: Any = None
        self._lock = threading.Lock()

    def scorer(self) -> Any:
        """The process's ScoringService, built on first use (in-process tests) if
        `start()` was not called."""
        if self._context is None:
            with self._lock:
                if self._context is None:
                    self._context = self._build()
        return self._context.service

    def start(self) -> list[str]:
        """Build the scorer and warm up every active version; WarmUpError if one cannot."""
        self.scorer()
        loaded = self.warm_up()
        for hook in self._context.service.hooks:
            if hasattr(hook, "beat"):
                hook.beat(force=True)  # ready: the models are warm
        return loaded

    def warm_up(self) -> list[str]:
        from workers.runtime import registry

        pipeline = self._context.pipeline
        loaded = []
        active = registry.active_versions(pipeline.engine)
        for name, version in active.items():
            record = registry.get_version(pipeline.engine, name, version)
            try:
                model = pipeline.models.get(record)
            except Exception as exc:  # noqa: BLE001 - any failure means: do not serve
                raise WarmUpError(
                    f"{name} v{version} ({record.backend}) cannot load or warm up here: "
                    f"{type(exc).__name__}: {exc}. Fix the artifact or backend (`scoring "
                    f"models validate {name} {version}`), promote a version that runs here, "
                    "or start this worker where the backend can run"
                ) from exc
            loaded.append(f"{model.name} v{model.version} ({model.backend} on {model.device})")
            log.info("warmed up %s", loaded[-1])
        if pipeline.versions is not None:
            pipeline.versions.prime(active)  # these serve until the watcher switches
        return loaded

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None

    def export_kafka_lag(self) -> None:
        """With metrics served: the group's lag per partition on each scrape (offsets
        read without joining the group, so no rebalance)."""
        metrics = self._context.metrics if self._context is not None else None
        if metrics is None:
            return
        from workers.sources.kafka.lag import consumer_lag

        kafka = self.settings.kafka

        def read() -> list[tuple[str, int, int]]:
            return [(p.topic, p.partition, p.lag) for p in consumer_lag(kafka, timeout_s=2)]

        metrics.add_kafka_lag(read)

    def _build(self) -> Any:
        from workers.core.context import build_context

        return build_context(self.settings, self.dead_letters, self.name)


def celery_worker_app(process: WorkerProcess) -> Celery:
    """The Celery app of `process`: the scoring task on its scorer; with
    SCORING_KAFKA_IN_WORKER the Kafka source runs as a thread beside it."""
    from workers.sources.celery.app import create_app

    settings = process.settings
    app = create_app(settings.broker, process.scorer)
    process.dead_letters.route(
        [names.SOURCE_REDIS, names.SOURCE_BULK], app.scoring_source.dead_letter
    )
    app.scoring_process = process
    stream = _stream_thread(process) if settings.kafka.in_worker else None
    if stream is not None:
        process.export_kafka_lag()

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and stream is not None:
            stream.start()

    @signals.worker_shutdown.connect(weak=False)
    def _close(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            if stream is not None:
                stream.stop()
            process.close()

    return app


def _stream_thread(process: WorkerProcess) -> Any:
    from workers.sources.kafka.runner import StreamThread

    return StreamThread(
        process.settings,
        process.scorer,
        on_open=lambda worker: process.dead_letters.route([names.SOURCE_KAFKA], worker.dead_letter),
    )


def run_celery_worker(settings: Settings, queues: list[str], loglevel: str = "INFO") -> int:
    """Warm up, then run a Celery worker (solo pool) in this process until told to stop."""
    from schemas.broker import check_broker

    check_broker(settings.broker)
    if settings.kafka.in_worker:
        from workers.sources.kafka.runner import check_reachable

        check_reachable(settings)
    process = WorkerProcess(settings)
    try:
        process.start()
    except WarmUpError as exc:
        log.error("worker %s not started: %s", process.name, exc)
        process.close()
        return 1
    app = celery_worker_app(process)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--hostname={process.name}",
            f"--queues={','.join(queues)}",
            f"--loglevel={loglevel}",
            "--task-events",
        ]
    )
    return 0


def run_stream_process(settings: Settings, stop: threading.Event) -> Any:
    """`scoring stream`: warm up, then consume Kafka until `stop`; returns its stats."""
    from workers.sources.kafka.runner import check_reachable, run_stream

    check_reachable(settings)
    process = WorkerProcess(settings)
    try:
        process.start()
        process.export_kafka_lag()
        return run_stream(
            settings,
            process.scorer(),
            stop,
            on_open=lambda w: process.dead_letters.route([names.SOURCE_KAFKA], w.dead_letter),
        )
    finally:
        process.close()


def main(argv: list[str] | None = None) -> int:
    """A worker child of `scoring worker` (the launcher sets its environment)."""
    parser = argparse.ArgumentParser(prog="python -m workers.process")
    parser.add_argument("--queues", default="")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    queues = [q for q in args.queues.split(",") if q] or [settings.broker.requests_queue]
    try:
        return run_celery_worker(settings, queues, args.loglevel)
    except Exception as exc:
        from schemas.failures import explain

        message = explain(exc, settings)
        if message is None:
            raise
        log.error("worker %s not started: %s", worker_name(settings.runtime), message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
