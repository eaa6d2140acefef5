"""The baseline users write first: one Celery task per row, one ORM insert and commit each.

Celery's defaults otherwise (prefork pool with one child per core, prefetch multiplier 4,
early acks), JSON only. Each child loads the model once, after the fork, with one torch
thread. Run as a real worker process: `python -m bench.naive_app QUEUE`, with the
SCORING_* environment the product's workers get.
"""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from functools import cache
from typing import Any

import torch
from celery import Celery
from sqlmodel import Session

from schemas import names as c
from schemas.db import make_engine
from schemas.settings import Settings
from schemas.tables import ScoreResult, utcnow
from schemas.wire import ScoreRequest, check_inputs
from workers.runtime import registry
from workers.runtime.loaded import LoadedModel, load_model

TASK = "bench.naive.score_one"


def create_app(settings: Settings, queue: str) -> Celery:
    """The naive app: the task is registered here; nothing connects until used."""
    app = Celery("naive", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker.broker_url(),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=queue,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK)(score_one)
    return app


@cache
def _engine_and_model() -> tuple[Any, LoadedModel]:
    """Per child process, on first use (after the fork)."""
    torch.set_num_threads(1)
    settings = Settings.from_env()
    engine = make_engine(settings.database.sqlalchemy_url())
    return engine, load_model(registry.get_version(engine, c.DEMO_MODEL))


def score_one(request: dict[str, Any]) -> None:
    """Validate, score alone, insert alone: the per-row costs the product amortises."""
    req = ScoreRequest.model_validate(request)
    engine, model = _engine_and_model()
    inputs = check_inputs(req.inputs, model.input_schema, 10_000)
    outputs = model.predict([inputs])[0]
    with Session(engine) as session:
        session.add(
            ScoreResult(
                request_id=req.request_id,
                model_name=model.name,
                model_version=model.version,
                artifact_sha256=model.sha256,
                outputs=outputs,
                status=c.STATUS_OK,
                source=c.SOURCE_REDIS,
                scored_at=utcnow(),
                backend=model.backend,
                device=model.device,
                worker=socket.gethostname(),
            )
        )
        session.commit()


def main(queue: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(Settings.from_env(), queue)
    app.worker_main(
        [
            "worker",
            f"--hostname=naive-{uuid.uuid4().hex[:4]}@{socket.gethostname()}",
            f"--queues={queue}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1])
