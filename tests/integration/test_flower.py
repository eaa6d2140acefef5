"""Flower on the real broker, as the ACL user `flower`: refuses to start without auth,
answers 401 without it, shows a running scoring worker, every task message it scored,
summarised (never rows of input data), and the depths of our requests and dead-letter
queues while the worker is paused, also in a real browser (screenshots in
test-artifacts/)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from producers.redis_producer import RedisProducer
from schemas import names
from schemas.broker import celery_app
from tests.helpers import demo_requests, free_port, wait_for
from workers.sources.celery.dead_letters import CeleryDeadLetters

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def flower_broker_url(redis_url: str) -> str:
    """The broker as Flower logs in to it in production: the local Redis's ACL user
    `flower` (SCORING_TEST_FLOWER_BROKER_URL for another server, else its own URL)."""
    if os.environ.get("SCORING_TEST_FLOWER_BROKER_URL"):
        return os.environ["SCORING_TEST_FLOWER_BROKER_URL"]
    if os.environ.get("SCORING_TEST_BROKER_URL"):
        return redis_url
    from deploy import services

    return str(services.endpoints(("redis",)).flower_broker_url)


def in_a_browser(
    base: str, auth: str, worker: str, depths: dict[str, int], secret: str, out: Path
) -> None:
    """Headless Chromium (Debian's) loads the workers, tasks and broker pages with
    credentials, finds the worker, a scoring task and each queue's depth on them (and
    not the broker's password) and saves screenshots; without credentials the page is
    refused."""
    from playwright.sync_api import Error, expect, sync_playwright

    out.mkdir(exist_ok=True)
    user, _, password = auth.partition(":")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            anonymous = browser.new_context().new_page()
            try:  # Chromium gives up on a 401 it has no credentials for
                response = anonymous.goto(base + "/workers")
                assert response is not None and response.status == 401
            except Error as exc:
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            page = browser.new_context(
                http_credentials={"username": user, "password": password}
            ).new_page()
            page.goto(base + "/workers")
            page.get_by_text(worker).first.wait_for(timeout=30_000)
            page.screenshot(path=out / "flower-workers.png", full_page=True)
            page.goto(base + "/tasks")
            page.get_by_text("scoring.score").first.wait_for(timeout=30_000)
            page.get_by_text("SUCCESS").first.wait_for(timeout=30_000)
            page.screenshot(path=out / "flower-tasks.png", full_page=True)
            page.goto(base + "/broker")
            for queue, depth in depths.items():
                row = page.locator("#queue-table tbody tr").filter(
                    has=page.get_by_role("cell", name=queue, exact=True)
                )
                expect(row.locator("td").nth(1)).to_have_text(str(depth), timeout=30_000)
            assert secret not in page.content()
            page.screenshot(path=out / "flower-broker.png", full_page=True)
        finally:
            browser.close()


def test_flower_needs_auth_and_sees_the_worker_every_task_and_the_queue_depths(
    redis_url: str, flower_broker_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    s = make_settings(broker={"url": redis_url})
    queue, dlq = s.broker.requests_queue, s.broker.dead_letter_queue
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_BROKER_URL": redis_url,
        "SCORING_REQUESTS_QUEUE": queue,
        "SCORING_DEAD_LETTER_QUEUE": dlq,
        "SCORING_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
        "SCORING_MODEL_STORE": str(s.runtime.model_store),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "scoring.cli", "flower"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2 and "SCORING_FLOWER_AUTH" in refused.stderr

    port, auth = free_port(), "ops:s3cret-pass"
    # Flower's Redis password: never on its pages nor in its log.
    secret = urllib.parse.unquote(urllib.parse.urlsplit(flower_broker_url).password or auth)
    log = (tmp_path / "procs.log").open("w")
    subprocess.run(
        [sys.executable, "-m", "scoring.cli", "models", "register", "demo", str(demo_artifact)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # One worker process as `scoring worker` starts it, under a name of its own: other
    # workers may share the broker (a benchmark, another test's `cpu0`), and Flower shows
    # their tasks too; the pause below must reach this one only.
    worker_name = f"flower-{queue.rsplit('-', 1)[-1]}@{socket.gethostname()}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.process"],
        env={
            **env,
            "SCORING_WORKER_NAME": worker_name,
            "CUDA_VISIBLE_DEVICES": "",
            "SCORING_TORCH_THREADS": "1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    flower = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "flower", f"--port={port}"],
        env={**env, "SCORING_BROKER_URL": flower_broker_url, "SCORING_FLOWER_AUTH": auth},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/")[0] == 401, timeout=120, every=1)
        assert get(base + "/", auth)[0] == 200

        def consuming() -> set[str]:
            """The workers that Flower, inspecting them now, sees consume our queue."""
            status, body = get(base + "/api/workers?refresh=1", auth)
            workers = json.loads(body or b"{}") if status == 200 else {}
            return {
                name
                for name, info in workers.items()
                if any(q.get("name") == queue for q in info.get("active_queues") or [])
            }

        wait_for(lambda: consuming() == {worker_name}, timeout=120, every=2)

        app = celery_app(s.broker)
        messages, per_message = 12, 5
        RedisProducer(app).send(
            demo_requests(messages * per_message, prefix="flower"), per_message=per_message
        )

        def tasks() -> dict[str, dict]:
            query = urllib.parse.urlencode({"workername": worker_name})
            status, body = get(base + "/api/tasks?" + query, auth)
            return json.loads(body or b"{}") if status == 200 else {}

        wait_for(
            lambda: sum(t.get("state") == "SUCCESS" for t in tasks().values()) == messages,
            timeout=120,
            every=1,
        )
        seen = tasks()
        assert len(seen) == messages
        for task in seen.values():
            assert task["name"] == "scoring.score"
            assert task["worker"] == worker_name and task["runtime"] is not None
            assert task["args"].startswith("[5 requests, model demo, first 'flower-")
            assert "inputs" not in task["args"] + task["kwargs"]  # a summary, not the rows
            assert "'source': 'redis'" in task["kwargs"]

        def depths() -> dict[str, int]:
            status, body = get(base + "/api/queues/length", auth)
            queues = json.loads(body or b"{}").get("active_queues", []) if status == 200 else []
            return {q["name"]: q["messages"] for q in queues}

        # Pause the worker (it stays up; only this worker: others may share the broker):
        # Flower sees it consume nothing, yet lists our queues, with what waits on them.
        paused = app.control.cancel_consumer(
            queue, destination=[worker_name], reply=True, timeout=10
        )
        assert [list(r) for r in paused] == [[worker_name]] and "ok" in paused[0][worker_name]
        wait_for(lambda: not consuming(), timeout=60, every=1)
        waiting = 3
        RedisProducer(app).send(
            demo_requests(waiting * per_message, prefix="waiting"), per_message=per_message
        )
        CeleryDeadLetters(app, dlq).publish({"reason": "test", "source": "redis", "payload": ""})
        expected = {queue: waiting, dlq: 1}
        wait_for(lambda: expected.items() <= depths().items(), timeout=30, every=0.5)
        in_a_browser(base, auth, worker_name, expected, secret, ARTIFACTS)

        resumed = app.control.add_consumer(queue, destination=[worker_name], reply=True, timeout=10)
        assert [list(r) for r in resumed] == [[worker_name]] and "ok" in resumed[0][worker_name]
        wait_for(lambda: depths().get(queue) == 0, timeout=60, every=0.5)
        wait_for(
            lambda: (
                sum(t.get("state") == "SUCCESS" for t in tasks().values()) == messages + waiting
            ),
            timeout=120,
            every=1,
        )
    finally:
        for proc in (flower, worker):
            proc.terminate()
            proc.wait(timeout=60)
        log.close()
        s.broker.redis_client().delete(
            *names.queue_lists(queue), *names.queue_lists(dlq), names.DOORBELL_PREFIX + queue
        )
    logged = (tmp_path / "procs.log").read_text()
    assert auth not in logged and secret not in logged
