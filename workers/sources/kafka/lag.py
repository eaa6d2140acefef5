"""Consumer lag per partition: how many requests the group has not committed yet."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.settings import KafkaSettings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end: int  # offset the next record will get
    committed: int | None  # the group's committed offset; None before its first commit

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def consumer_lag(
    kafka: KafkaSettings,
    topic: str | None = None,
    group: str | None = None,
    timeout_s: float = 5.0,
) -> list[PartitionLag]:
    """End offset minus committed offset, per partition of `topic`, for `group`.

    Reads offsets only: it never joins the group, so it causes no rebalance. Raises
    kafka.errors.KafkaError when the broker cannot be reached within `timeout_s`.
    """
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    topic = topic or kafka.topic
    timeout_ms = int(timeout_s * 1000)
    consumer = KafkaConsumer(
        **kafka.client_config(),
        group_id=group or kafka.group,
        enable_auto_commit=False,
        client_id="scoring-status",
        request_timeout_ms=max(timeout_ms, 1000) + 1000,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = consumer.end_offsets(tps, timeout_ms=timeout_ms) if tps else {}
        committed = {tp: consumer.committed(tp, timeout_ms=timeout_ms) for tp in tps}
        return [PartitionLag(topic, tp.partition, ends[tp], committed[tp]) for tp in tps]
    finally:
        consumer.close(autocommit=False)
