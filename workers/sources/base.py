"""What a source of requests is, and what becomes of each item it hands over.

A source (the Celery/Redis task, the Kafka consumer) turns what its broker delivered
into `WorkItem`s, submits them to the process's one `Scorer` and waits for the ticket.
The scorer gives every item an `Outcome`; the source then settles each one: it
acknowledges (or commits) STORED and DEAD items and sends RETRY items back, so that
nothing is acknowledged before its result is in the database. The scoring core never
knows which source an item came from, except by the `source` name it records.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Outcome(enum.Enum):
    """What the scorer did with an item."""

    STORED = "stored"  # its result rows are committed: acknowledge it
    DEAD = "dead"  # it can never be scored (not JSON, unknown model): dead-lettered, then acked
    RETRY = "retry"  # nothing of it was stored (database down): send it back, do not ack


@dataclass
class WorkItem:
    """A request (or a bulk chunk of many) as a source delivered it, before any checking."""

    payload: Any  # a dict, raw bytes / str from a broker, or a bulk chunk
    source: str  # recorded on each result row: kafka, redis or bulk
    enqueued_at: datetime | None = None
    bulk_run_id: str | None = None
    token: Any = None  # the source's own handle for ack / commit / retry
    size: int = 1  # requests it carries: what micro-batches are counted in
    outcome: Outcome | None = None  # set by the scorer
    reason: str | None = None  # why it is DEAD or RETRY
    result: dict[str, Any] | None = None  # the result row written for it (sources publish it)
    attempt: int = 1  # deliveries so far, counted by the source (brokers do not count)
    bulk_chunk: int | None = None  # the chunk's number in its bulk run (the run's ledger)


class Ticket(Protocol):
    """Completion of one submit: `wait` returns True once every item has an outcome."""

    def wait(self, timeout: float | None = None) -> bool: ...


class Scorer(Protocol):
    """The process's scorer thread (workers.core.service.ScoringService)."""

    def submit(self, items: Iterable[WorkItem]) -> Ticket: ...


class Source(Protocol):
    """One kind of source; the process wires one instance of each it consumes."""

    name: str

    def dead_letter(self, item: WorkItem) -> None:
        """Park an item that can never be scored, with `item.reason`. Called on the scorer
        thread as the item is found unusable; must not raise for a broker hiccup it can
        retry later (settle sees the item as DEAD either way)."""

    def settle(self, items: Sequence[WorkItem]) -> Any:
        """After the ticket: acknowledge STORED and DEAD items, send RETRY items back
        (re-published with `attempt + 1`, or the partition rewound). Whatever cannot be
        sent back stays unacknowledged, for the broker to redeliver."""

    def close(self) -> None:
        """Finish what is in hand and release the broker connection."""


def settled_ok(item: WorkItem) -> bool:
    """The item is finished for its source: stored, or dead-lettered with its reason."""
    return item.outcome in (Outcome.STORED, Outcome.DEAD)


def retried(items: Sequence[WorkItem]) -> list[WorkItem]:
    return [item for item in items if item.outcome is Outcome.RETRY]
