"""A Celery client in another language (Node, Go, ...) needs no Celery: it LPUSHes one JSON
string onto the queue's Redis list. Here redis-py plays that client, with no Celery or
kombu on the sending side: the README's example message ("Sending from other languages")
is scored by a running worker, and the same request with any other content type, or with
a body that is not base64, not JSON or not Celery's layout, ends as a dead letter whose
reason names what was wrong; nothing is unpickled or executed, and the worker keeps
serving (a valid message after them is scored)."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from schemas.db import make_engine
from schemas.settings import Settings
from tests.helpers import demo_requests, wait_for, worker_env, worker_process
from workers.runtime import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_BYTES = 100_000  # SCORING_MAX_MESSAGE_BYTES of the worker under test


def envelope(
    queue: str, task_id: str, body: str, content_type: str | None = "application/json"
) -> tuple[str, str]:
    """(delivery tag, the message as it sits in the Redis list): kombu's JSON envelope
    around a Celery protocol 2 task message, built by hand as the README describes it."""
    tag = str(uuid.uuid4())
    message: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "js", "task": "scoring.score", "id": task_id, "retries": 0},
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
        },
    }
    if content_type is None:
        del message["content-type"]
    return tag, json.dumps(message)


def task_body(requests: list[dict[str, Any]]) -> str:
    """Celery protocol 2's body: [args, kwargs, embed]; args[0] is the list of requests."""
    return json.dumps([[requests], {"source": "redis"}, {}])


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class _Exploit:
    """A pickle that creates a file if it is ever unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


@dataclass
class Running:
    settings: Settings
    client: redis.Redis
    engine: Engine
    proc: subprocess.Popen[bytes]
    log: Path

    def results(self) -> dict[str, tuple[str, int]]:
        """request id -> (status, rows)."""
        with self.engine.connect() as conn:
            sql = "SELECT request_id, min(status), count(*) FROM score_results GROUP BY request_id"
            return {r[0]: (r[1], r[2]) for r in conn.execute(text(sql))}

    def dead_letters(self) -> list[dict[str, Any]]:
        """The parked messages' bodies (kombu envelopes, read here without kombu)."""
        raw = self.client.lrange(self.settings.broker.dead_letter_queue, 0, -1)
        return [json.loads(base64.b64decode(json.loads(m)["body"])) for m in raw]


@pytest.fixture
def running(
    redis_url: str, sqlite_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> Iterator[Running]:
    settings = make_settings(broker={"url": redis_url})
    engine = make_engine(sqlite_url)
    registry.register(engine, settings.runtime.model_store, "demo", demo_artifact)
    log = tmp_path / "worker.log"
    env = worker_env(redis_url, sqlite_url, settings, SCORING_MAX_MESSAGE_BYTES=str(MAX_BYTES))
    proc = worker_process(env, "raw", log)
    client = redis.Redis.from_url(redis_url)
    try:
        yield Running(settings, client, engine, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        broker = settings.broker
        client.delete(broker.requests_queue, broker.dead_letter_queue)
        client.delete(f"_scoring.doorbell.{broker.requests_queue}")
        engine.dispose()


def test_hand_built_messages_are_scored_or_dead_lettered_with_the_reason(
    running: Running, tmp_path: Path
) -> None:
    queue = running.settings.broker.requests_queue
    first, after, *others = demo_requests(12, prefix="raw")
    tag, example = envelope(queue, "task-first", b64(task_body([first])))
    running.client.lpush(queue, example)  # the README's example: no doorbell, no kombu
    wait_for(lambda: first["request_id"] in running.results(), timeout=120, every=0.2)

    marker = tmp_path / "pwned"  # created if anything were unpickled or run
    yaml_exploit = f"!!python/object/apply:os.system ['touch {marker}']"
    two_items = json.dumps([[[others[7]]], {"source": "redis"}])
    # task id -> (body, content type, what the dead letter's reason must name); the
    # request inside is a valid one wherever the body can carry it.
    bad = {
        "t-pickle": (b64(pickle.dumps(_Exploit(str(marker)))), "application/x-python-serialize",
                     "application/x-python-serialize"),
        "t-yaml": (b64(yaml_exploit), "application/x-yaml", "application/x-yaml"),
        "t-msgpack": (b64(b"\x93\x91\x81\xa1a\x01\x80\x80"), "application/x-msgpack",
                      "application/x-msgpack"),
        "t-text": (b64(task_body([others[0]])), "text/plain", "text/plain"),
        "t-none": (b64(task_body([others[1]])), None, "no content type"),
        "t-data": (b64(task_body([others[2]])), "application/data", "application/data"),
        "t-not-base64": ("!" + task_body([others[3]]), "application/json", "base64"),
        "t-not-json": (b64("[[[{not json"), "application/json", "application/json"),
        "t-two-items": (b64(two_items), "application/json", "[args, kwargs, embed]"),
        "t-huge": (b64(task_body([{**others[4], "metadata": {"x": "y" * MAX_BYTES}}])),
                   "application/json", "SCORING_MAX_MESSAGE_BYTES"),
    }  # fmt: skip
    tags = [tag]
    for task_id, (body, content_type, _) in bad.items():
        tag, message = envelope(queue, task_id, body, content_type)
        tags.append(tag)
        running.client.lpush(queue, message)
    tag, valid = envelope(queue, "task-after", b64(task_body([after])))
    tags.append(tag)
    running.client.lpush(queue, valid)

    dlq = running.settings.broker.dead_letter_queue
    wait_for(lambda: running.client.llen(dlq) >= len(bad), timeout=120, every=0.2)
    wait_for(lambda: after["request_id"] in running.results(), timeout=120, every=0.2)
    wait_for(lambda: running.client.hmget("unacked", tags) == [None] * len(tags), timeout=60)

    log = running.log.read_text(errors="replace")
    assert running.proc.poll() is None, log[-3000:]
    assert "Unrecoverable error" not in log, log[-3000:]
    assert not marker.exists()
    assert running.results() == {first["request_id"]: ("ok", 1), after["request_id"]: ("ok", 1)}
    letters = running.dead_letters()
    assert len(letters) == len(bad)
    reasons = {letter["headers"]["id"]: letter["reason"] for letter in letters}
    assert sorted(reasons) == sorted(bad)  # one dead letter per bad message
    for task_id, (_, _, named) in bad.items():
        assert named in reasons[task_id], (task_id, reasons[task_id])
    assert running.client.llen(queue) == 0
