"""One worker process: its name names the host, dead letters go back to their source, and
a version that cannot warm up stops the process before it consumes anything."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from schemas import names as c
from schemas.db import make_engine
from schemas.settings import RuntimeSettings
from workers.process import DeadLetterRouter, WarmUpError, WorkerProcess, worker_name
from workers.runtime import registry
from workers.runtime.artifacts import MANIFEST
from workers.sources.base import WorkItem


def test_the_worker_name_carries_the_host() -> None:
    host = socket.gethostname()
    assert worker_name(RuntimeSettings(worker_name="gpu1")) == f"gpu1@{host}"
    assert worker_name(RuntimeSettings(worker_name="a@b")) == "a@b"
    assert worker_name(RuntimeSettings()).endswith(f"@{host}")


def test_dead_letters_go_back_to_the_source_they_came_from() -> None:
    kafka, redis = [], []
    route = DeadLetterRouter()
    route.route([c.SOURCE_KAFKA], kafka.append)
    route.route([c.SOURCE_REDIS, c.SOURCE_BULK], redis.append)
    for source in (c.SOURCE_KAFKA, c.SOURCE_REDIS, c.SOURCE_BULK):
        route(WorkItem(payload=source, source=source, reason="not JSON"))
    assert [i.payload for i in kafka] == ["kafka"]
    assert [i.payload for i in redis] == ["redis", "bulk"]


def test_a_version_that_cannot_warm_up_stops_the_process_with_the_fix(
    make_settings, sqlite_url: str, demo_artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(database={"url": sqlite_url})
    engine = make_engine(sqlite_url)
    record = registry.register(engine, settings.runtime.model_store, "demo", demo_artifact)
    # The weights change after registration: the sha256 no longer matches.
    manifest = Path(record.artifact_uri) / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "tampered": True}))
    process = WorkerProcess(settings)
    try:
        with pytest.raises(WarmUpError, match=r"demo v1 \(eager\) cannot load .*sha256"):
            process.start()
    finally:
        process.close()


def test_the_version_watcher_gives_way_to_this_process_scorer(
    make_settings, sqlite_url: str
) -> None:
    """Promotions warm up paced by the scorer's own batches (workers/core/pacing.py): the
    watcher's activity signal is one of the scorer's batch hooks."""
    from workers.core.context import build_context

    context = build_context(make_settings(database={"url": sqlite_url}), lambda item: None, "t")
    try:
        assert context.watcher is not None and context.watcher.scorer is not None
        assert context.watcher.scorer in context.service.hooks
    finally:
        context.close()
