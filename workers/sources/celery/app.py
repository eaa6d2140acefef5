"""The Celery application of a worker process: the broker app plus the scoring task."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from schemas.broker import celery_app
from schemas.settings import BrokerSettings
from workers.sources.base import Scorer
from workers.sources.celery.consumer import DeadLetteringConsumer
from workers.sources.celery.source import CelerySource
from workers.sources.celery.tasks import register_tasks


def create_app(broker: BrokerSettings, scorer: Callable[[], Scorer]) -> Celery:
    """A worker's Celery app; `scorer()` returns the process's scorer when a flush needs
    it. No connection is made here. The app's source is `app.scoring_source`."""
    app = celery_app(broker)
    # Messages Celery cannot use go to the dead-letter queue instead of a log line.
    app.conf.worker_consumer = DeadLetteringConsumer
    source = CelerySource(app, broker)
    app.scoring_source = source
    register_tasks(app, broker, source, scorer)
    return app
