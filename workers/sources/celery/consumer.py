"""Celery's consumer, changed so that messages it cannot use become dead letters (and so
that workers.sources.celery.prefetch can reach its QoS).

Stock Celery logs and drops a message it cannot decode (say, pickle, which we never
accept) or whose task it does not know. Here each one is parked on the dead-letter queue
with the reason and its raw body first, so nothing disappears with only a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from celery_batches import Batches
from kombu.serialization import prepare_accept_content

from schemas.tables import utcnow
from workers.sources.celery.dead_letters import CeleryDeadLetters
from workers.sources.celery.task_messages import task_message_problem


class DeadLetteringConsumer(Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app.scoring_consumer = self  # workers.sources.celery.prefetch sets its QoS in rows

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """After a broker reconnect, let celery-batches schedule its flush timer again.

        celery-batches starts its timer once and keeps the handle; the reconnect clears the
        event loop's timers, so the handle points at nothing and a buffer smaller than
        `flush_every` (the prefetch is reset to one message) is never flushed: the worker
        stops consuming for good (seen here; compare celery#10302). Requests buffered from
        the old connection are flushed with the next ones; their acks fail (the channel is
        gone) and the messages come back after their leases, to be stored once (upsert).
        """
        super().on_connection_error_after_connected(exc)
        for task in self.app.tasks.values():
            if isinstance(task, Batches):
                task._tref = None

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        """Celery's handler behind task_messages.py's checks: a message Celery would take
        undecoded, or whose layout would stop the worker, is parked instead."""
        handler = super().create_task_handler(*args, **kwargs)
        accepted = prepare_accept_content(self.app.conf.accept_content)
        limit = self.app.scoring_broker.max_message_bytes

        def on_task_received(message: Any) -> None:
            problem = task_message_problem(message, accepted, limit)
            if problem is None:
                return handler(message)
            self._park(message, problem)
            message.ack()
            return None

        return on_task_received

    def _park(self, message: Any, reason: str) -> None:
        broker = self.app.scoring_broker
        body = message.body
        if isinstance(body, bytes | bytearray):
            body = body.decode("utf-8", errors="replace")
        CeleryDeadLetters(self.app, broker.dead_letter_queue).publish(
            {
                "reason": reason,
                "source": "redis",
                "payload": str(body)[:1_000_000],
                "content_type": message.content_type,
                "headers": _plain(message.headers),
                "at": utcnow().isoformat(),
            }
        )

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._park(message, f"undecodable message ({message.content_type}): {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._park(message, "not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._park(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._park(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)


def _plain(headers: Any) -> dict[str, str]:
    return {str(k): str(v)[:200] for k, v in (headers or {}).items()}
