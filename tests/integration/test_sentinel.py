"""The same atomic fetch behind Redis Sentinel: a `sentinel://` broker URL, one primary and
one replica, producers and a worker through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from tests.helpers import count_results, demo_requests, inprocess_worker, wait_for
from tests.integration.sentinel_stack import sentinel_stack
from workers.runtime import registry

pytestmark = pytest.mark.integration


def test_producers_and_workers_reach_the_primary_through_the_sentinel(
    tmp_path: Path, make_settings, sqlite_url: str, demo_artifact: Path
) -> None:
    from schemas.db import make_engine

    with sentinel_stack(tmp_path) as stack:
        settings = make_settings(broker={"url": stack.url()}, database={"url": sqlite_url})
        assert settings.broker.transport_options()["master_name"] == "scoring"
        engine = make_engine(sqlite_url)
        registry.register(engine, settings.runtime.model_store, "demo", demo_artifact)
        with inprocess_worker(settings) as app:
            assert type(app.connection_for_read().transport).__name__ == "SentinelTransport"
            RedisProducer(celery_app(settings.broker)).send(demo_requests(300), per_message=10)
            wait_for(lambda: count_results(engine) >= 300, timeout=60)
        primary = stack.primary.client()
        assert primary.hlen("unacked") == 0
        queue = settings.broker.requests_queue
        assert sum(primary.llen(k) for k in primary.keys(queue + "*")) == 0
        assert count_results(engine) == 300
