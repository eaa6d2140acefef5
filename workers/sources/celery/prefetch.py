"""Prefetch counted in rows, not messages.

A bulk chunk carries hundreds of requests per message and an upstream event one; a fixed
message prefetch lets one worker hoard a small job (64 chunks of 256 rows) while the next
worker idles, or starves per-event batches. Each flush tells us the rows per message, so
the worker's Redis prefetch (kombu QoS) and celery-batches' flush size are both set to
`hold_rows` over that, between 1 and `max_messages`. Messages waiting in the buffer for
their countdown get a place each on top (batches.py), as Celery's own strategy gives them.
"""

from __future__ import annotations

import math
from typing import Any


class RowPrefetch:
    def __init__(self, task: Any, hold_rows: int, max_messages: int) -> None:
        self.task = task
        self.hold_rows = hold_rows
        self.max_messages = max_messages
        self.messages = 1  # until the first flush says how big messages are

    def observe(self, messages: int, rows: int) -> int:
        """Size the prefetch from one flush (a sample of what the queue holds now); return
        the message prefetch now in force."""
        if messages <= 0:
            return self.messages
        wanted = math.ceil(self.hold_rows / max(rows / messages, 1.0))
        self.apply(max(1, min(self.max_messages, wanted)))
        return self.messages

    def apply(self, messages: int) -> None:
        """Set both limits (again: a broker reconnect makes Celery reset the QoS)."""
        self.messages = messages
        self.task.flush_every = messages
        consumer = getattr(self.task.app, "scoring_consumer", None)
        qos = getattr(consumer, "qos", None)
        if qos is not None:  # absent when the task runs eagerly (tests, `apply`)
            qos.value = messages + len(getattr(self.task, "waiting", ()))
            qos.update()

    def waiting_changed(self) -> None:
        """A message began or ended its wait for a countdown: make room for it, or not."""
        self.apply(self.messages)
