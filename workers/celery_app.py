"""The Celery application, configured from Settings for JSON-only, late-ack safety."""

from __future__ import annotations

from celery import Celery

from scoring.settings import Settings


def create_app(settings: Settings) -> Celery:
    """A Celery app with the scoring task registered; no connection is made here."""
    from workers.tasks import register_tasks

    app = Celery("scoring", set_as_current=False)
    app.conf.update(settings.celery_config())
    app.scoring_settings = settings  # type: ignore[attr-defined]
    register_tasks(app, settings)
    return app
