"""`scoring stream`: a Kafka consumer-group worker (one member of the group)."""

from __future__ import annotations

import logging
import signal
import threading

import typer

from scoring.cli.common import fail, settings, use_settings

log = logging.getLogger(__name__)


def quiet_kafka(level: int = logging.WARNING) -> None:
    """kafka-python logs every connection at INFO; keep its warnings and errors only (a
    one-shot command that reports a failure itself keeps none: `level` CRITICAL)."""
    logging.getLogger("kafka").setLevel(level)


def stream(
    topic: str = typer.Option(None, "--topic", help="Requests topic (default: setting)."),
    group: str = typer.Option(None, "--group", help="Consumer group (default: setting)."),
) -> None:
    """Score requests from Kafka as one consumer of a group."""
    from workers.process import WarmUpError, run_stream_process
    from workers.sources.kafka.runner import check_poll_budget

    quiet_kafka()
    overrides = {k: v for k, v in {"topic": topic, "group": group}.items() if v}
    s = settings().replace(kafka=overrides) if overrides else settings()
    use_settings(s)
    try:
        check_poll_budget(s)
        s.kafka.client_config()
    except ValueError as exc:
        fail(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kafka = s.kafka
    log.info("consuming %s as group %s at %s", kafka.topic, kafka.group, kafka.bootstrap)
    try:
        stats = run_stream_process(s, stop)
    except WarmUpError as exc:
        fail(str(exc), code=1)
    log.info("stream stopped: %s", stats)
