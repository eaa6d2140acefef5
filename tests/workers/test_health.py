"""The container probe: ready once models are warm, unhealthy only when a worker stopped
scoring while messages wait."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from workers.health import check
from workers.hooks.heartbeat import Heartbeat


def test_a_heartbeat_is_written_after_each_batch(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path / "cpu0@h.json", "cpu0@h", min_interval_s=0)
    beat.beat(force=True)
    assert json.loads((tmp_path / "cpu0@h.json").read_text())["batches"] == 0
    beat.after_batch([], 0.01)
    body = json.loads((tmp_path / "cpu0@h.json").read_text())
    assert body["batches"] == 1 and time.time() - body["at"] < 5


@pytest.mark.integration
def test_liveness_is_consumption_not_process(tmp_path: Path, make_settings, redis_url: str) -> None:
    s = make_settings(runtime={"heartbeat_dir": tmp_path}, broker={"url": redis_url})
    healthy, why = check(s, max_age_s=60, ready_only=True)
    assert not healthy and "still starting" in why
    (tmp_path / "cpu0@h.json").write_text(json.dumps({"at": time.time() - 300, "worker": "w"}))
    assert check(s, 60, ready_only=True)[0]
    healthy, why = check(s, 60, ready_only=False)
    assert healthy and "idle" in why  # nothing queued: an old heartbeat proves nothing wrong
    client = redis.Redis.from_url(redis_url)
    try:
        client.lpush(s.broker.requests_queue, b"{}")
        healthy, why = check(s, 60, ready_only=False)
        assert not healthy and "1 messages wait" in why
        (tmp_path / "cpu0@h.json").write_text(json.dumps({"at": time.time(), "worker": "w"}))
        assert check(s, 60, ready_only=False)[0]
    finally:
        client.delete(s.broker.requests_queue)
