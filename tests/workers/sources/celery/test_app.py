"""The Celery path accepts JSON only, and parks what it cannot use as dead letters."""

from __future__ import annotations

import pickle
from pathlib import Path

from kombu import Queue

from schemas.db import make_engine
from tests.helpers import count_results, demo_requests, inprocess_worker, wait_for
from workers.runtime import registry
from workers.sources.celery.app import create_app


def dead_letters(app, name: str, expected: int) -> list[dict]:  # type: ignore[no-untyped-def]
    found = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(name)
        while len(found) < expected:
            message = queue.get(timeout=30)
            found.append(message.decode())
            message.ack()
        queue.close()
    return found


def test_config_is_json_only_with_late_acks_and_requeue_on_worker_loss(make_settings) -> None:
    conf = create_app(make_settings().broker, lambda: None).conf  # type: ignore[arg-type,return-value]
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"] and conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert not conf.task_acks_on_failure_or_timeout
    assert conf.broker_transport_options["visibility_timeout"] >= 60


def test_pickle_and_unknown_tasks_are_never_run_and_become_dead_letters(
    make_settings, sqlite_url: str, demo_artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(database={"url": sqlite_url}, broker={"url": "memory://localhost/"})
    engine = make_engine(sqlite_url)
    registry.register(engine, settings.runtime.model_store, "demo", demo_artifact)
    marker = tmp_path / "pwned"
    queue = Queue(settings.broker.requests_queue)
    with inprocess_worker(settings) as app:
        with app.producer_or_acquire() as producer:
            # A pickle that would create a file if it were ever unpickled.
            evil = pickle.dumps(_Exploit(str(marker)))
            producer.publish(
                evil,
                routing_key=queue.name,
                declare=[queue],
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers={"task": "scoring.score", "id": "evil-1"},
            )
        app.send_task("scoring.not_a_task", args=[[1]], queue=queue.name)
        app.send_task("scoring.score", args=[demo_requests(3)], queue=queue.name)
        wait_for(lambda: count_results(engine) == 3)
        parked = dead_letters(app, settings.broker.dead_letter_queue, 2)
    assert not marker.exists()
    parked.sort(key=lambda p: p["reason"])
    pickled, unknown = parked
    assert "Refusing to deserialize untrusted content of type pickle" in pickled["reason"]
    assert pickled["content_type"] == "application/x-python-serialize"
    assert pickled["headers"]["id"] == "evil-1"  # enough to find what sent it
    assert unknown["reason"].startswith("unknown task")
    assert "scoring.not_a_task" in unknown["reason"]
    assert "[1]" in unknown["payload"]  # the original arguments are kept for a replay


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))
