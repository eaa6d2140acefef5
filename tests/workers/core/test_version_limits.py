"""A version's own max_batch_size and max_wait_ms (model.json `runtime`) bound its batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlmodel import select

from schemas.db import session_scope
from schemas.tables import BatchMetric, utcnow
from tests.helpers import demo_requests
from workers.core.batcher import STOP, next_batch
from workers.core.service import ScoringService
from workers.runtime import registry
from workers.sources.base import WorkItem


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feeder(items: list, clock: FakeClock, step: float = 0.0):  # type: ignore[no-untyped-def]
    """receive(): the items one by one, each `step` seconds after the last; then STOP."""
    pending = list(items)

    def receive(timeout: float | None):  # type: ignore[no-untyped-def]
        if not pending:
            return STOP
        if timeout is not None and step > timeout:
            clock.now += timeout
            return None
        clock.now += step
        return pending.pop(0)

    return receive


def test_an_items_version_limits_close_the_batch_early() -> None:
    limits = {"small": (3, 10.0), "quick": (100, 0.005), "big": (1000, 10.0)}
    clock = FakeClock()
    receive = feeder(["big", "small", "big", "big", "big", "big"], clock)
    assert next_batch(receive, 100, 10.0, clock, limits=limits.get) == ["big", "small", "big"]
    # a version's max_wait counts from that item's arrival: "quick" comes at 0.004 s, so
    # the batch takes what arrives until 0.009 s (items every 0.002 s)
    clock = FakeClock()
    receive = feeder(["big", "quick", "big", "big", "big"], clock, step=0.002)
    assert next_batch(receive, 100, 10.0, clock, limits=limits.get) == [
        "big",
        "quick",
        "big",
        "big",
    ]
    # unknown versions (None) keep the process's limits
    clock = FakeClock()
    receive = feeder(["x"] * 7, clock)
    assert next_batch(receive, 5, 10.0, clock, limits=lambda item: None) == ["x"] * 5


def test_the_scorer_batches_a_version_by_its_own_max_batch_size(
    demo_pipeline, tmp_path: Path, demo_artifact: Path
) -> None:  # type: ignore[no-untyped-def]
    engine, pipeline, _, _ = demo_pipeline
    small = tmp_path / "small"
    shutil.copytree(demo_artifact, small)
    manifest = json.loads((small / "model.json").read_text())
    manifest["runtime"] = {**manifest.get("runtime", {}), "max_batch_size": 4, "max_wait_ms": 5}
    (small / "model.json").write_text(json.dumps(manifest))
    v2 = registry.register(engine, tmp_path / "store", "demo", small)
    assert (v2.max_batch_size, v2.max_wait_ms) == (4, 5.0)
    pipeline.models.get(registry.get_version(engine, "demo", 1))
    pipeline.models.get(v2)

    sizes: list[int] = []

    class Sizes:
        def before_batch(self, items) -> None:  # type: ignore[no-untyped-def]
            sizes.append(len(items))

        def after_batch(self, items, seconds, report=None) -> None:  # type: ignore[no-untyped-def]
            pass

    service = ScoringService(pipeline, max_batch_size=64, max_wait_s=0.05, hooks=[Sizes()])
    pinned = demo_requests(10, prefix="v2", model_version=2)
    bytes_pinned = [json.dumps(p).encode() for p in demo_requests(6, prefix="b2", model_version=2)]
    items = [WorkItem(p, "redis", utcnow()) for p in pinned + bytes_pinned]
    ticket = service.submit(items)  # all queued before the scorer starts: batching decides
    service.start()
    assert ticket.wait(120)
    service.close()
    assert sum(sizes) == 16 and max(sizes) <= 4
    with session_scope(engine) as session:
        calls = session.exec(select(BatchMetric)).all()
    assert {c.model_version for c in calls} == {2} and max(c.batch_size for c in calls) <= 4

    # a version with the process's limits (v1, the defaults) is batched by them
    sizes.clear()
    service = ScoringService(pipeline, max_batch_size=64, max_wait_s=0.05, hooks=[Sizes()])
    ticket = service.submit([WorkItem(p, "redis", utcnow()) for p in demo_requests(20, "v1")])
    service.start()
    assert ticket.wait(120)
    service.close()
    assert sizes == [20]
