"""Small helpers for tests: requests, counting rows, an in-process worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, func, select

from schemas.db import session_scope
from schemas.settings import Settings
from schemas.tables import ScoreResult
from workers.runtime.models.demo.build import sample_rows


def demo_requests(n: int, prefix: str = "r", seed: int = 0, **extra: Any) -> list[dict[str, Any]]:
    names, rows, _ = sample_rows(n, seed)
    return [
        {
            "request_id": f"{prefix}-{i}",
            "model": "demo",
            "inputs": {k: float(v) for k, v in zip(names, row, strict=True)},
            **extra,
        }
        for i, row in enumerate(rows)
    ]


def count_results(engine: Engine, **where: Any) -> int:
    with session_scope(engine) as session:
        query = select(func.count()).select_from(ScoreResult)
        for column, value in where.items():
            query = query.where(getattr(ScoreResult, column) == value)
        return int(session.scalar(query) or 0)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


@contextmanager
def inprocess_worker(settings: Settings) -> Iterator[Celery]:
    """A real Celery worker (solo pool) in a thread of this process, scoring with its own
    WorkerProcess (warmed up first); yields the worker's app."""
    from workers.process import WorkerProcess, celery_worker_app

    process = WorkerProcess(settings)
    process.start()
    app = celery_worker_app(process)
    try:
        with start_worker(
            app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
        ):
            yield app
    finally:
        process.close()


def worker_env(redis_url: str, database_url: str, settings: Any, **extra: str) -> dict[str, str]:
    """The environment of a `scoring` process on this test's queues, store and database."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_BROKER_URL": redis_url,
        "SCORING_DATABASE_URL": database_url,
        "SCORING_MODEL_STORE": str(settings.runtime.model_store),
        "SCORING_REQUESTS_QUEUE": settings.broker.requests_queue,
        "SCORING_DEAD_LETTER_QUEUE": settings.broker.dead_letter_queue,
        "SCORING_TORCH_THREADS": "1",
        "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
        **extra,
    }


def worker_process(
    env: dict[str, str], name: str, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """One worker process as the launcher starts it (`python -m workers.process`), its
    output in `log`."""
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.process"],
            env={**env, "SCORING_WORKER_NAME": name, **extra},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def run_scoring(
    *args: str, env: dict[str, str], cwd: Any = None, timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`scoring ARGS` as a user runs it: a separate process, with exactly `env`."""
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def summary(stdout: str) -> dict[str, str]:
    """The run summary table that `scoring bulk --wait` and `scoring demo` print, by row."""
    return {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in stdout.splitlines()
        if line.count("│") == 3
    }


def free_port(pair: bool = False) -> int:
    """A free loopback port; with `pair`, one whose next port is free too (a launcher's
    second process, Kafka's controller)."""
    import socket

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        if port < 65535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise AssertionError("no two consecutive free ports")
