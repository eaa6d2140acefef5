"""Flower on the real broker: refuses to start without auth, answers 401 without it,
shows a running scoring worker, and every task message it scored, summarised (never
rows of input data), also in a real browser (screenshots in test-artifacts/)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from tests.helpers import demo_requests, free_port, wait_for

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


def in_a_browser(base: str, auth: str, worker: str, out: Path) -> None:
    """Headless Chromium (Debian's) loads the workers and tasks pages with credentials,
    finds the worker and a scoring task on them and saves screenshots; without
    credentials the page is refused."""
    from playwright.sync_api import Error, sync_playwright

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
        finally:
            browser.close()


def test_flower_needs_auth_and_sees_the_worker_and_every_task(
    redis_url: str, make_settings, tmp_path: Path, demo_artifact: Path
) -> None:
    s = make_settings(broker={"url": redis_url})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_BROKER_URL": redis_url,
        "SCORING_REQUESTS_QUEUE": s.broker.requests_queue,
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
    log = (tmp_path / "procs.log").open("w")
    subprocess.run(
        [sys.executable, "-m", "scoring.cli", "models", "register", "demo", str(demo_artifact)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    flower = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "flower", f"--port={port}"],
        env={**env, "SCORING_FLOWER_AUTH": auth},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/")[0] == 401, timeout=120, every=1)
        assert get(base + "/", auth)[0] == 200

        def worker_listed() -> bool:
            status, body = get(base + "/api/workers?refresh=1", auth)
            workers = json.loads(body or b"{}") if status == 200 else {}
            return any(
                q.get("name") == s.broker.requests_queue
                for info in workers.values()
                for q in info.get("active_queues") or []
            )

        wait_for(worker_listed, timeout=120, every=2)

        messages, per_message = 12, 5
        RedisProducer(celery_app(s.broker)).send(
            demo_requests(messages * per_message, prefix="flower"), per_message=per_message
        )

        def tasks() -> dict[str, dict]:
            status, body = get(base + "/api/tasks", auth)
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
            assert task["worker"] and task["runtime"] is not None
            assert task["args"].startswith("[5 requests, model demo, first 'flower-")
            assert "inputs" not in task["args"] + task["kwargs"]  # a summary, not the rows
            assert "'source': 'redis'" in task["kwargs"]
        (worker_name,) = {task["worker"] for task in seen.values()}
        in_a_browser(base, auth, worker_name, ARTIFACTS)
    finally:
        for proc in (flower, worker):
            proc.terminate()
            proc.wait(timeout=60)
        log.close()
    assert auth not in (tmp_path / "procs.log").read_text()
