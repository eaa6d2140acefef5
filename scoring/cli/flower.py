"""`scoring flower`: Flower on the Celery broker, never without authentication."""

from __future__ import annotations

import os

import typer

from scoring.cli.common import fail, settings


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

    os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line, where `ps` shows it
    celery_app(s.broker).start(
        ["flower", f"--port={port or s.flower.port}", f"--address={address}"]
    )
