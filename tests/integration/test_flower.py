"""Flower on the real broker: refuses to start without auth, answers 401 without it,
and shows a running scoring worker."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def test_flower_needs_auth_and_sees_the_worker(
    redis_url: str, make_settings, tmp_path: Path
) -> None:
    s = make_settings()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_BROKER_URL": redis_url,
        "SCORING_REQUESTS_QUEUE": s.broker.requests_queue,
        "SCORING_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
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
        [sys.executable, "-m", "scoring.cli", "db", "upgrade"],
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
    finally:
        for proc in (flower, worker):
            proc.terminate()
            proc.wait(timeout=60)
        log.close()
    assert auth not in (tmp_path / "procs.log").read_text()
