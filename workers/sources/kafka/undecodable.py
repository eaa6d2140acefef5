"""Records that cannot be decoded never stall their partition.

kafka-python raises from `poll()` when a record batch cannot be decoded (a compression
codec it has no library for, a batch that fails its CRC), and leaves the broken batch
buffered: every later poll returns nothing for that partition, for ever. Here a
short-lived probe consumer (no group) reads one record at each assigned partition's
position to find the partition at fault; the offending offset is parked on the
dead-letter topic (with where it was and why; its bytes cannot be read), and the
consumer seeks one past it, which drops the broken buffer. A batch of N undecodable
records becomes N dead letters, one probe each: rare by nature, and never a stall.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka.errors import CorruptRecordError, UnsupportedCodecError

from schemas import names
from schemas.settings import KafkaSettings

log = logging.getLogger(__name__)

DECODE_ERRORS = (UnsupportedCodecError, CorruptRecordError)
PROBE_POLL_MS = 5000


def probe_factory(kafka: KafkaSettings, client_id: str) -> Callable[[], Any]:
    """Makes the group-less consumer `find_undecodable` reads one record with."""
    from kafka import KafkaConsumer

    config = {**kafka.consumer_config(), "group_id": None, "client_id": client_id}
    return lambda: KafkaConsumer(**config)


def find_undecodable(
    probe_factory: Callable[[], Any], positions: dict[Any, int]
) -> tuple[Any, int, Exception] | None:
    """The first (partition, offset, error) whose record at `positions[partition]` cannot
    be decoded, or None when every one can (the error was transient)."""
    probe = probe_factory()
    try:
        ends = probe.end_offsets(list(positions))
        for tp, offset in positions.items():
            if offset >= ends.get(tp, 0):
                continue  # nothing to read there
            probe.assign([tp])
            probe.seek(tp, offset)
            try:
                probe.poll(timeout_ms=PROBE_POLL_MS, max_records=1)
            except DECODE_ERRORS as exc:
                return tp, offset, exc
        return None
    finally:
        probe.close()


def skip_undecodable(
    consumer: Any, producer: Any, dlq_topic: str, probe_factory: Callable[[], Any]
) -> tuple[Any, int] | None:
    """Find the undecodable record behind the error `consumer.poll()` just raised, park
    it on `dlq_topic` and seek past it; returns (partition, offset), or None if no
    partition reproduces the error."""
    positions = {tp: consumer.position(tp) for tp in consumer.assignment()}
    found = find_undecodable(probe_factory, positions)
    if found is None:
        return None
    tp, offset, exc = found
    park(producer, dlq_topic, tp, offset, exc)
    consumer.seek(tp, offset + 1)
    return tp, offset


def park(producer: Any, topic: str, tp: Any, offset: int, exc: Exception) -> None:
    """A dead letter for a record whose bytes cannot be read: an empty value and headers
    that say where it was and why."""
    reason = f"undecodable record ({type(exc).__name__}: {exc})"
    headers = [
        (names.DLQ_HEADER_REASON, reason.encode("utf-8")),
        (names.DLQ_HEADER_TOPIC, tp.topic.encode()),
        (names.DLQ_HEADER_PARTITION, str(tp.partition).encode()),
        (names.DLQ_HEADER_OFFSET, str(offset).encode()),
    ]
    future = producer.send(topic, key=None, value=b"", headers=headers)
    producer.flush()
    if future.failed():
        raise future.exception
    log.warning("dead letter (kafka): %s[%d] offset %d: %s", tp.topic, tp.partition, offset, reason)
