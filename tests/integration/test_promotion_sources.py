"""A promotion while requests stream in through both sources, into real worker processes
(a Celery worker on Redis and a `scoring stream` consumer on Kafka): every request has
exactly one result, attributed to exactly one of the two versions (number and artifact
sha256), each worker cuts over once (all its v1 batches, then only v2 batches), nothing
is dead-lettered or fails, and both exit 0 on SIGTERM afterwards. The latency across
the switch is measured by `scoring bench switch`, not here."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.kafka_producer import EventProducer
from producers.redis_producer import RedisProducer
from schemas.broker import celery_app
from tests.helpers import demo_requests, wait_for, worker_env, worker_process
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from workers.runtime import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUT = "cut over demo v1 -> v2"
BEFORE = 300  # results per source before the promotion
AFTER_S = 4.0  # seconds of load after both workers cut over


class Feeder(threading.Thread):
    """Sends 10 requests to each source every 0.1 s until stopped; counts what it sent."""

    def __init__(self, stack: KafkaStack, broker: Any) -> None:
        super().__init__(name="feeder", daemon=True)
        self.stack, self.broker = stack, broker
        self.sent = {"redis": 0, "kafka": 0}
        self.stop_at = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            redis_out = RedisProducer(celery_app(self.broker))
            with EventProducer(self.stack.settings().kafka) as kafka_out:
                while not self.stop_at.is_set():
                    for source, send in (
                        ("redis", lambda r: redis_out.send(r, per_message=5)),
                        ("kafka", kafka_out.send),
                    ):
                        batch = demo_requests(10, prefix=f"{source}{self.sent[source]:06d}")
                        assert send(batch) == len(batch)
                        self.sent[source] += len(batch)
                    time.sleep(0.1)  # the stream's pace, not a wait for a condition
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


def by_source(stack: KafkaStack) -> dict[str, int]:
    rows = stack.rows("SELECT source, count(*) FROM score_results GROUP BY source")
    return {str(source): int(n) for source, n in rows}


def test_a_promotion_mid_stream_cuts_over_once_per_worker_through_both_sources(
    kafka_settings,
    pg_url: str,
    make_topic,
    redis_url: str,
    make_settings,
    tmp_path: Path,
    demo_artifact: Path,
    demo_artifact_v2: Path,
) -> None:
    settings = make_settings(broker={"url": redis_url})
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 2) as stack:
        engine = stack.engine()
        v2 = registry.register(engine, stack.store, "demo", demo_artifact_v2)
        sha = dict(stack.rows("SELECT version, artifact_sha256 FROM model_versions"))
        env = worker_env(redis_url, pg_url, settings, SCORING_MODEL_STORE=str(stack.store))
        celery = worker_process(env, "celery-a", tmp_path / "celery-a.log")
        stream = stack.start("stream-a")
        logs = {"celery-a": tmp_path / "celery-a.log", "stream-a": tmp_path / "stream-a.log"}
        feeder = Feeder(stack, settings.broker)
        try:
            wait_for(lambda: len(stack.assigned("stream-a")) == 2, timeout=120)
            wait_for(lambda: "warmed up" in logs["celery-a"].read_text(), timeout=120)
            feeder.start()
            wait_for(lambda: min(by_source(stack).values(), default=0) >= BEFORE, timeout=120)
            assert len(by_source(stack)) == 2
            registry.promote(engine, "demo", v2.version, "test: mid-stream")
            for log in logs.values():
                wait_for(lambda log=log: CUT in log.read_text(), timeout=90, every=0.2)
            time.sleep(AFTER_S)  # v2 scores a while on both paths
            feeder.stop_at.set()
            feeder.join(60)
            assert feeder.error is None, feeder.error
            total = sum(feeder.sent.values())
            wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") >= total, 120)
            for name, proc in (("celery-a", celery), ("stream-a", stream)):
                assert proc.poll() is None, logs[name].read_text()[-3000:]
        finally:
            feeder.stop_at.set()
            for proc in (celery, stream):
                if proc.poll() is None:
                    proc.terminate()
            codes = [proc.wait(60) for proc in (celery, stream)]
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs.values()]

        rows = stack.rows(
            "SELECT count(*), count(DISTINCT request_id), count(*) FILTER (WHERE status <> 'ok')"
            " FROM score_results"
        )[0]
        assert tuple(rows) == (total, total, 0)
        assert by_source(stack) == feeder.sent
        attributed = stack.rows(
            "SELECT model_version, artifact_sha256, count(*) FROM score_results GROUP BY 1, 2"
        )
        assert {(v, s) for v, s, _ in attributed} == {(1, sha[1]), (2, sha[2])}

        for worker in ("celery-a", "stream-a"):
            versions = [
                v
                for (v,) in stack.rows(
                    f"SELECT model_version FROM batch_metrics WHERE worker LIKE '{worker}@%'"
                    " ORDER BY id"
                )
            ]
            cut = versions.index(2)
            assert cut > 0 and set(versions[:cut]) == {1} and set(versions[cut:]) == {2}, worker
            last_v1, first_v2 = stack.rows(
                "SELECT max(scored_at) FILTER (WHERE model_version = 1),"
                " min(scored_at) FILTER (WHERE model_version = 2)"
                f" FROM score_results WHERE worker LIKE '{worker}@%'"
            )[0]
            assert last_v1 <= first_v2, worker
            log = logs[worker].read_text(errors="replace")
            assert log.count(CUT) == 1, worker
            assert "Traceback" not in log, log[-3000:]
            print(f"{worker}: {cut} v1 batches, then {len(versions) - cut} v2 batches")
        assert read_topic(stack.client, stack.dlq, 0) == []
        dlq = settings.broker.dead_letter_queue
        assert redis.Redis.from_url(redis_url).llen(dlq) == 0
        engine.dispose()
