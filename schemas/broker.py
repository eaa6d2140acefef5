"""The Celery application every process uses to reach the broker: producers, workers, Flower.

It carries no tasks (workers register theirs on top, see workers/sources/celery/app.py):
producers send the scoring task by name. JSON is the only content type on every channel
(tasks, results, events), and the Redis transport is the project's atomic-fetch one,
registered before any connection is made.
"""

from __future__ import annotations

from celery import Celery

from schemas import redis_transport
from schemas.settings import BrokerSettings

redis_transport.register()  # before any connection: every redis:// URL gets it


def check_broker(broker: BrokerSettings, attempts: int = 3) -> None:
    """Connect once, so that a process fails at start, with what the server said, when the
    broker is unreachable or refuses the credentials (kombu's OperationalError or
    redis-py's AuthenticationError), instead of retrying for ever in the background."""
    app = celery_app(broker)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=attempts, interval_start=0.5, interval_step=1)
        conn.default_channel.client.ping()


def celery_app(broker: BrokerSettings, name: str = "scoring") -> Celery:
    """A Celery app configured for `broker`; no connection is made here."""
    app = Celery(name, set_as_current=False)
    app.conf.update(broker.celery_config())
    app.scoring_broker = broker
    return app
