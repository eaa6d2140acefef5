"""The enqueue arm of `scoring bench e2e` counts what it published by draining the queue:
every message taken off is acknowledged, or our transport's lease brings it back and the
next repetition counts it again (it reported 100,000 requests out per repetition more than
in, and lost_rows 300,000, before)."""

from __future__ import annotations

import json

import pytest
import redis

from bench.e2e_arms import drain_requests
from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from tests.helpers import demo_requests

pytestmark = pytest.mark.integration


def test_a_drained_queue_leaves_no_message_to_come_back(redis_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    broker = make_settings(broker={"url": redis_url}).broker
    app = celery_app(broker)
    assert RedisProducer(app).send(demo_requests(100, prefix="drain"), per_message=8) == 100
    queue = broker.requests_queue
    assert drain_requests(app.conf.broker_url, queue) == 100
    client = redis.Redis.from_url(redis_url)
    held = [v for v in client.hvals("unacked") if json.loads(v)[2] == queue]
    assert held == []
    assert drain_requests(app.conf.broker_url, queue) == 0
