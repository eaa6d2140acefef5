"""All configuration, read once from SCORING_* environment variables at the entry point."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring import constants as c


class Settings(BaseSettings):
    """Every knob of the system. Defaults suit a laptop; production sets the URLs."""

    model_config = SettingsConfigDict(env_prefix="SCORING_", frozen=True, extra="ignore")

    # --- storage
    database_url: str = "sqlite:///./scoring.db"
    model_store: Path = Path("./model-store")

    # --- Redis / Celery
    broker_url: str = "redis://127.0.0.1:6379/0"
    requests_queue: str = c.REQUESTS_QUEUE
    dead_letter_queue: str = c.DEAD_LETTER_QUEUE
    # Unacked Redis messages come back after this many seconds (celery#4984): keep it above
    # the worst time a message can spend buffered plus scored.
    visibility_timeout_s: int = 600
    # Rows one worker process holds unacknowledged: its message prefetch (and celery-batches'
    # flush size) is this over the rows per message it has seen, at most worker_prefetch.
    worker_hold_rows: int = Field(default=512, ge=1)
    # The most messages one worker process holds (per-event messages of one request each).
    worker_prefetch: int = Field(default=256, ge=1)
    # Seconds celery-batches waits before flushing a partial buffer.
    worker_flush_interval_s: float = Field(default=0.05, gt=0)

    # --- Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = c.REQUESTS_TOPIC
    kafka_results_topic: str = c.RESULTS_TOPIC
    kafka_dlq_topic: str = c.DEAD_LETTER_TOPIC
    kafka_feedback_topic: str = c.FEEDBACK_TOPIC
    kafka_group: str = "scoring"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_ssl_cafile: Path | None = None
    # Records one poll hands the scorer; with the worst batch time this must stay well
    # inside kafka_max_poll_interval_ms, or the group rebalances and redelivers (kafka-python#1401).
    kafka_max_poll_records: int = Field(default=500, ge=1)
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # How long the group waits for a silent consumer (killed, frozen) before reassigning it.
    kafka_session_timeout_ms: int = Field(default=45_000, ge=6_000)
    # Run the Kafka consumer inside each `scoring worker` process too (`--kafka`).
    kafka_in_worker: bool = False

    # --- batching defaults (a model version's own runtime settings take precedence)
    max_batch_size: int = Field(default=256, ge=1)
    max_wait_ms: float = Field(default=10.0, ge=0)

    # --- bulk
    chunk_size: int = Field(default=256, ge=1)

    # --- input limits
    max_text_chars: int = Field(default=10_000, ge=1)
    max_metadata_bytes: int = 4096

    # --- resilience
    db_retries: int = Field(default=5, ge=0)
    db_retry_backoff_s: float = Field(default=0.5, ge=0)

    # --- runtime
    torch_threads: int | None = None

    # --- quality gate (`scoring models validate`; `promote` refuses a failed version)
    gate_min_agreement: float = Field(default=0.99, ge=0, le=1)
    gate_max_score_diff: float = Field(default=0.05, ge=0)
    gate_max_accuracy_drop: float = Field(default=0.01, ge=0)

    # --- operations
    flower_auth: SecretStr | None = None
    flower_port: int = 5555
    metrics_port: int | None = None

    def celery_config(self) -> dict[str, Any]:
        """Celery settings that make the Redis path lose nothing (see README, 'Safety')."""
        return {
            "broker_url": self.broker_url,
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "event_serializer": "json",
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_acks_on_failure_or_timeout": False,
            "task_ignore_result": True,
            # One message until the first flush shows the rows per message (workers.prefetch).
            "worker_prefetch_multiplier": 1,
            "worker_send_task_events": True,
            "task_send_sent_event": False,
            "task_default_queue": self.requests_queue,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": {
                "visibility_timeout": self.visibility_timeout_s,
                "polling_interval": 0.01,
                # kombu sweeps for timed-out messages every interval x throttle seconds
                # (100 s by default): a dead worker's messages come back at most this long
                # after their visibility timeout instead. One ZRANGE per sweep.
                "unacked_restore_interval": max(1, min(10, self.visibility_timeout_s // 2)),
                "unacked_restore_throttle": 1,
            },
            "worker_hijack_root_logger": False,
            # Messages Celery cannot use go to the dead-letter queue instead of a log line.
            "worker_consumer": "workers.consumer:DeadLetteringConsumer",
            # On SIGTERM: finish the flush in hand, then requeue what is still buffered.
            "worker_soft_shutdown_timeout": 10.0,
            "worker_enable_soft_shutdown_on_idle": True,
        }

    def sqlalchemy_url(self) -> str:
        return self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
