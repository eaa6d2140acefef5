"""Through a real Celery worker: promote and rollback change the version new requests get."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.redis_producer import RedisProducer
from schemas.db import make_engine
from tests.helpers import count_results, demo_requests, inprocess_worker, wait_for
from workers.runtime import registry

pytestmark = pytest.mark.integration


def test_promote_rollback_and_explicit_versions(
    db_url: str, make_settings, demo_artifact: Path, demo_artifact_v2: Path
) -> None:
    settings = make_settings(database={"url": db_url}, broker={"url": "memory://localhost/"})
    engine = make_engine(db_url)
    registry.register(engine, settings.runtime.model_store, "demo", demo_artifact)
    v2 = registry.register(engine, settings.runtime.model_store, "demo", demo_artifact_v2)

    def send_and_wait(prefix: str, n: int = 30, **extra: object) -> None:
        producer.send(demo_requests(n, prefix=prefix, **extra), per_message=7)
        wait_for(lambda: count_results(engine) >= sent[0] + n, timeout=60)
        sent[0] += n

    def serving(app: object, version: int) -> None:
        """The worker's watcher warms the newly active version, then the scorer switches
        at its next batch: requests keep flowing (scored by the old version) until then."""
        watcher = app.scoring_process._context.watcher  # type: ignore[attr-defined]
        n = 0
        while watcher.serving("demo") != version:
            n += 1
            send_and_wait(f"switching-{version}-{n}", n=1)
            assert n < 600, "the worker never switched"

    sent = [0]
    with inprocess_worker(settings) as app:
        producer = RedisProducer(app)
        send_and_wait("before")
        registry.promote(engine, "demo", 2)
        serving(app, 2)
        send_and_wait("promoted")
        registry.rollback(engine, "demo")
        serving(app, 1)
        send_and_wait("rolled-back")
        send_and_wait("pinned", model_version=2)

    def scored(prefix: str) -> set[tuple[int, str | None]]:
        from sqlmodel import select

        from schemas.db import session_scope
        from schemas.tables import ScoreResult

        with session_scope(engine) as session:
            rows = session.exec(
                select(ScoreResult).where(ScoreResult.request_id.startswith(prefix))
            ).all()  # type: ignore[attr-defined]
        assert len(rows) == 30
        return {(r.model_version, r.artifact_sha256) for r in rows}

    def versions(prefix: str) -> set[int]:
        return {version for version, _ in scored(prefix)}

    assert versions("before") == {1}
    assert versions("promoted") == {2}
    assert versions("rolled-back") == {1}
    assert versions("pinned") == {2}
    # v2's rows carry v2's artifact (requests sent while switching went to either version)
    assert scored("promoted") | scored("pinned") == {(2, v2.artifact_sha256)}
