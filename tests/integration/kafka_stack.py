"""A Kafka test stack: own topics and group, a migrated PostgreSQL database with the demo
model registered, `scoring stream` processes, and readers for the result and DLQ topics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.fleet import stop_processes
from schemas.db import make_engine
from schemas.settings import DatabaseSettings, KafkaSettings, Settings
from workers.runtime import registry

ASSIGNED = re.compile(r"partitions assigned: (.*)$", re.MULTILINE)


@dataclass
class KafkaStack:
    kafka: KafkaSettings  # the connection (bootstrap, SASL credentials, TLS CA)
    database_url: str
    store: Path
    logs: Path
    requests: str
    results: str
    dlq: str
    # The feedback topic its processes read (empty: none, so that no test's processes
    # read the shared default topic and dead-letter what others left there).
    feedback: str = ""
    group: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def client(self) -> dict[str, Any]:
        """kafka-python options of a test client (credentials included: never print)."""
        return self.kafka.client_config()

    @property
    def connection_env(self) -> dict[str, str]:
        """SCORING_KAFKA_* of the connection, as a `scoring` process reads them."""
        k = self.kafka
        out = {
            "SCORING_KAFKA_BOOTSTRAP": k.bootstrap,
            "SCORING_KAFKA_SECURITY_PROTOCOL": k.security_protocol,
            "SCORING_KAFKA_SASL_MECHANISM": k.sasl_mechanism,
            "SCORING_KAFKA_USERNAME": k.username or "",
            "SCORING_KAFKA_PASSWORD": k.password.get_secret_value() if k.password else "",
            "SCORING_KAFKA_SSL_CAFILE": str(k.ssl_cafile) if k.ssl_cafile else "",
        }
        return {key: value for key, value in out.items() if value}

    @property
    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
            "SCORING_DATABASE_URL": self.database_url,
            "SCORING_MODEL_STORE": str(self.store),
            **self.connection_env,
            "SCORING_KAFKA_TOPIC": self.requests,
            "SCORING_KAFKA_RESULTS_TOPIC": self.results,
            "SCORING_KAFKA_DLQ_TOPIC": self.dlq,
            "SCORING_KAFKA_FEEDBACK_TOPIC": self.feedback,
            "SCORING_KAFKA_GROUP": self.group,
            # A killed consumer's partitions move after 6 s (the broker's minimum).
            "SCORING_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SCORING_TORCH_THREADS": "1",
            "SCORING_DB_RETRY_BACKOFF_S": "0.05",
        }

    def settings(self) -> Settings:
        return Settings(
            database=DatabaseSettings(url=self.database_url),
            kafka=self.kafka.model_copy(
                update={
                    "topic": self.requests,
                    "results_topic": self.results,
                    "dlq_topic": self.dlq,
                    "feedback_topic": self.feedback,
                    "group": self.group,
                }
            ),
        )

    def engine(self) -> Engine:
        return make_engine(self.database_url)

    def register_demo(self, artifact: Path) -> None:
        registry.register(self.engine(), self.store, "demo", artifact)

    def start(
        self,
        name: str,
        *argv: str,
        extra_env: dict[str, str] | None = None,
        python: bool = False,
    ) -> subprocess.Popen[bytes]:
        """`scoring stream` (or another command; with `python`, argv goes to the
        interpreter itself) as a process of its own, named `name`."""
        log = (self.logs / f"{name}.log").open("wb")
        command = [*argv] if python else ["-m", "scoring.cli", *(argv or ("stream",))]
        proc = subprocess.Popen(
            [sys.executable, *command],
            env={**self.env, "SCORING_WORKER_NAME": name, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def assigned(self, name: str) -> list[str]:
        """The partitions `name` was given in its latest assignment."""
        found = ASSIGNED.findall(self.log(name))
        return [] if not found or found[-1] == "none" else found[-1].split(", ")

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(30)

    def stop(self, name: str, timeout: float = 60) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        stop_processes(self.procs.values())

    def scalar(self, sql: str) -> Any:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql)).scalar_one()
        finally:
            engine.dispose()

    def rows(self, sql: str) -> list[Any]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql)).all())
        finally:
            engine.dispose()


def read_topic(
    client: dict[str, Any], topic: str, at_least: int, timeout: float = 120
) -> list[Any]:
    """Every record of `topic` from the beginning, once at least `at_least` are there
    (`client`: kafka-python connection options, e.g. `stack.client`)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**client, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        records: list[Any] = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
                records.extend(batch)
            ends = consumer.end_offsets(tps)
            if len(records) >= at_least and all(consumer.position(tp) >= ends[tp] for tp in tps):
                return records
        raise AssertionError(f"{topic}: {len(records)} records in {timeout}s, wanted {at_least}")
    finally:
        consumer.close(autocommit=False)


@contextmanager
def open_stack(
    kafka: KafkaSettings,
    database_url: str,
    make_topic: Any,
    tmp_path: Path,
    artifact: Path,
    request_partitions: int,
    result_partitions: int,
) -> Iterator[KafkaStack]:
    """A stack on topics of this test's own, with the demo model registered; stops every
    process it started on the way out."""
    stack = KafkaStack(
        kafka=kafka,
        database_url=database_url,
        store=tmp_path / "store",
        logs=tmp_path,
        requests=make_topic("requests", request_partitions),
        results=make_topic("results", result_partitions),
        dlq=make_topic("dlq", 1),
    )
    stack.register_demo(artifact)
    try:
        yield stack
    finally:
        stack.stop_all()
