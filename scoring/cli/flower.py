"""`scoring flower`: Flower on the Celery broker, never without authentication.

Its broker page (`/broker`, and `/api/queues/length`) shows the depth of our requests and
dead-letter queues, whether or not a worker consumes them at the moment: see
`list_queues`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import typer

from scoring.cli.common import fail, settings


def list_queues(queues: Iterable[str]) -> None:
    """Make Flower's broker page list `queues` too, besides those its workers consume.

    Flower (2.x, `flower.views.BaseHandler.get_active_queue_names`) lists only the queues
    that the workers it knows said they consume when it last inspected them, or the
    default queue when it knows no worker (workers of another application on the same
    Redis count). So it never showed the dead-letter queue, which no worker consumes, and
    it dropped the requests queue while its workers were paused (`cancel_consumer`) or
    down: just when that queue fills up. The depths themselves are right: Flower LLENs
    each queue's lists at kombu's priority steps (`names.queue_lists`) and sums them.
    """
    from flower.views import BaseHandler

    consumed = BaseHandler.get_active_queue_names  # AttributeError if Flower changed
    ours = set(queues)

    def get_active_queue_names(self: BaseHandler) -> list[str]:
        return sorted(set(consumed(self)) | ours)

    BaseHandler.get_active_queue_names = get_active_queue_names


def flower(
    port: int = typer.Option(None, "--port", help="Default: SCORING_FLOWER_PORT."),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to listen on."),
) -> None:
    """Watch queues and workers in Flower (basic auth from SCORING_FLOWER_AUTH)."""
    s = settings()
    auth = s.flower.auth.get_secret_value() if s.flower.auth else ""
    if ":" not in auth:
        fail(
            "set SCORING_FLOWER_AUTH=user:password first: Flower's API can start tasks and "
            "shut workers down, so it never runs without authentication"
        )
    from schemas.broker import celery_app, check_broker

    check_broker(s.broker)
    list_queues([s.broker.requests_queue, s.broker.dead_letter_queue])

    os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line, where `ps` shows it
    celery_app(s.broker).start(
        ["flower", f"--port={port or s.flower.port}", f"--address={address}"]
    )
