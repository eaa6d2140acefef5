"""Which Kafka offsets may be committed: only a partition's prefix of finished records.

A record is finished when its result is stored or its dead letter is confirmed. The
committed offset of a partition is the offset after the last record of the unbroken run
of finished records from where the partition was last committed; a record sent back for
retry (database down) stops the run, and the partition is rewound to it. Kept free of
kafka-python so that this logic is unit-tested without a broker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

WAITING, DONE, RETRY = "waiting", "done", "retry"


@dataclass
class _Partition:
    order: deque[int] = field(default_factory=deque)  # offsets in the order received
    states: dict[int, str] = field(default_factory=dict)
    committable: int | None = None  # next offset to commit, once something is finished

    def drop_from(self, offset: int) -> None:
        while self.order and self.order[-1] >= offset:
            del self.states[self.order.pop()]


class OffsetBook:
    """Per-partition record states; safe to use from the consumer and rebalance threads."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = {}
        self._lock = threading.Lock()

    def received(self, tp: Hashable, offset: int) -> None:
        """A record was handed out by poll(); offsets must arrive in order per partition."""
        with self._lock:
            part = self._parts.setdefault(tp, _Partition())
            if part.order and part.order[-1] >= offset:
                part.drop_from(offset)  # redelivered after a seek: start again there
            part.order.append(offset)
            part.states[offset] = WAITING

    def finished(self, tp: Hashable, offset: int, ok: bool) -> None:
        """Record the outcome: ok (stored or dead-lettered) or retry (nothing stored)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None or offset not in part.states:
                return  # revoked or rewound meanwhile: it will be read again
            part.states[offset] = DONE if ok else RETRY
            while part.order and part.states[part.order[0]] == DONE:
                done = part.order.popleft()
                del part.states[done]
                part.committable = done + 1

    def to_commit(self, partitions: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        """Offsets (next record to read) that may be committed now, per partition."""
        with self._lock:
            wanted = self._parts.keys() if partitions is None else set(partitions)
            return {
                tp: part.committable
                for tp, part in self._parts.items()
                if tp in wanted and part.committable is not None
            }

    def committed(self, offsets: dict[Hashable, int]) -> None:
        """The broker accepted these offsets: nothing to commit for them until more finish."""
        with self._lock:
            for tp, offset in offsets.items():
                part = self._parts.get(tp)
                if part is not None and part.committable == offset:
                    part.committable = None

    def rewind(self) -> dict[Hashable, int]:
        """Partitions with a record to retry: the offset to seek back to (its first such).

        Everything from that offset on is forgotten, since the consumer reads it again.
        """
        seeks: dict[Hashable, int] = {}
        with self._lock:
            for tp, part in self._parts.items():
                first = next((o for o in part.order if part.states[o] == RETRY), None)
                if first is not None:
                    seeks[tp] = first
                    part.drop_from(first)
        return seeks

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Partitions given up in a rebalance: their records are someone else's now."""
        with self._lock:
            for tp in partitions:
                self._parts.pop(tp, None)

    def in_flight(self) -> int:
        """Records received and not yet committable (unfinished, or behind one that is)."""
        with self._lock:
            return sum(len(p.order) for p in self._parts.values())
