"""The baseline `scoring bench stream` compares against: a consumer that handles one message
at a time (validate, score, insert, commit), with the same pipeline code and database.

Run as `python -m bench.stream_baseline` with the same SCORING_* settings as a stream
worker; SIGTERM stops it. It publishes a result event after each insert (unconfirmed, so
as not to add a round trip) only so that its latency is measured the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("bench.stream_baseline")


def main() -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from schemas.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env()
    pipeline = _pipeline(settings)
    consumer = KafkaConsumer(**{**settings.kafka.consumer_config(), "max_poll_records": 1})
    consumer.subscribe([settings.kafka.topic], listener=_logged())
    producer = KafkaProducer(**settings.kafka.producer_config())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handled = 0
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=200, max_records=1).values():
            for record in records:
                _handle(record, pipeline, consumer, producer, settings.kafka.results_topic)
                handled += 1
    producer.flush()
    consumer.close(autocommit=False)
    producer.close()
    log.info("baseline stopped after %d records", handled)


def _handle(record: Any, pipeline: Any, consumer: Any, producer: Any, results: str) -> None:
    """Validate, score and insert one record (one transaction), then commit its offset."""
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from workers.sources.kafka.source import result_event, work_item

    item = work_item(record)
    pipeline.process([item])
    if item.result is not None:
        key = item.result["request_id"].encode()
        producer.send(results, key=key, value=result_event(item.result))
    tp = TopicPartition(record.topic, record.partition)
    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})


def _pipeline(settings: Any) -> Any:
    """The stream worker's pipeline, without its micro-batcher; active models loaded."""
    from schemas.db import make_engine
    from workers.core.pipeline import PipelineConfig, ScoringPipeline
    from workers.core.sink import ResultSink
    from workers.runtime import registry
    from workers.runtime.loaded import ModelCache, pick_device

    if settings.runtime.torch_threads:
        import torch

        torch.set_num_threads(settings.runtime.torch_threads)
    engine = make_engine(settings.database.sqlalchemy_url())
    db = settings.database
    pipeline = ScoringPipeline(
        engine,
        ResultSink(engine, db.retries, db.retry_backoff_s),
        ModelCache(pick_device()),
        PipelineConfig(worker="batch1"),
    )
    for name, version in registry.active_versions(engine).items():
        pipeline.models.get(registry.get_version(engine, name, version))
    return pipeline


def _logged() -> Any:
    from kafka import ConsumerRebalanceListener

    class Logged(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned))
            log.info("partitions assigned: %s", names or "none")

    return Logged()


if __name__ == "__main__":
    main()
