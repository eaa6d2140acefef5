"""Every setting, one frozen pydantic-settings class per concern, read once at an entry point.

`Settings.from_env()` reads all SCORING_* environment variables; each process calls it
once where it starts (the CLI, a worker process) and passes the result down. Secrets,
including URLs that may carry a password, are `SecretStr`: they print as `**********`
and are unwrapped only by the methods below that build client configurations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import names
from schemas.redaction import redact_url


def _section(prefix: str = "SCORING_") -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore", populate_by_name=True)


class DatabaseSettings(BaseSettings):
    """Where results, metrics, runs and the registry live (SQLite or PostgreSQL)."""

    model_config = _section("SCORING_DB_")

    # SQLAlchemy URL; PostgreSQL: postgresql+psycopg://user:password@host/db?sslmode=...
    url: SecretStr = Field(
        default=SecretStr("sqlite:///./scoring.db"), validation_alias="SCORING_DATABASE_URL"
    )
    # Write retries (exponential backoff) before a batch is handed back to its source.
    retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # PostgreSQL ends a worker's session left idle inside a transaction this long (its
    # batch's row locks with it): a worker cut off mid-commit blocks no other. 0: off.
    idle_in_transaction_timeout_s: float = Field(default=30.0, ge=0)

    def sqlalchemy_url(self) -> str:
        """The URL with its password: for create_engine only, never for a log line."""
        return self.url.get_secret_value()

    def display_url(self) -> str:
        return redact_url(self.sqlalchemy_url())


class BrokerSettings(BaseSettings):
    """The Redis broker and the Celery side of workers."""

    model_config = _section()

    # redis://user:password@host:port/db, rediss:// for TLS, sentinel://host:port;...
    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"), validation_alias="SCORING_BROKER_URL"
    )
    requests_queue: str = names.REQUESTS_QUEUE
    dead_letter_queue: str = names.DEAD_LETTER_QUEUE
    # A message a worker holds is redelivered when its lease is this old: workers renew
    # the leases of what they hold, so this bounds recovery after a crash, not batch time.
    visibility_timeout_s: int = Field(default=60, ge=2)
    # Rows one worker process holds unacknowledged: its message prefetch (and
    # celery-batches' flush size) is this over the rows per message it has seen.
    worker_hold_rows: int = Field(default=512, ge=1)
    # The most messages one worker process holds (per-event messages of one request each).
    worker_prefetch: int = Field(default=256, ge=1)
    # A task message whose body is larger is dead-lettered before it is decoded (a bulk
    # chunk of 256 long texts is a few MB).
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Seconds celery-batches waits before flushing a partial buffer.
    worker_flush_interval_s: float = Field(default=0.05, gt=0)
    # A request whose scoring, alone, killed its worker this many times (the model exits
    # or segfaults on it) is dead-lettered instead of delivered again.
    max_deliveries: int = Field(default=3, ge=1)
    # With a sentinel:// URL: the name the sentinels monitor the primary by, and their own
    # password if they require one (the URL's credentials are the primary's).
    sentinel_master: str = Field(
        default="scoring", validation_alias="SCORING_BROKER_SENTINEL_MASTER"
    )
    sentinel_password: SecretStr | None = Field(
        default=None, validation_alias="SCORING_BROKER_SENTINEL_PASSWORD"
    )
    # rediss:// (TLS): the CA that signed the server's certificate (default: the system's
    # CAs), and a client certificate and key for a server that asks for one. The server's
    # certificate and host name are always verified.
    ssl_ca: Path | None = Field(default=None, validation_alias="SCORING_BROKER_SSL_CA")
    ssl_cert: Path | None = Field(default=None, validation_alias="SCORING_BROKER_SSL_CERT")
    ssl_key: Path | None = Field(default=None, validation_alias="SCORING_BROKER_SSL_KEY")

    def broker_url(self) -> str:
        """The URL with its password: for kombu only, never for a log line."""
        return self.url.get_secret_value()

    def display_url(self) -> str:
        return redact_url(self.broker_url())

    def ssl_options(self) -> dict[str, Any] | None:
        """redis-py TLS options (Celery's `broker_use_ssl`) for a rediss:// URL; None for a
        plain one."""
        if not self.broker_url().startswith("rediss://"):
            return None
        import ssl

        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        for key, path in (
            ("ssl_ca_certs", self.ssl_ca),
            ("ssl_certfile", self.ssl_cert),
            ("ssl_keyfile", self.ssl_key),
        ):
            if path is not None:
                options[key] = str(path)
        return options

    def redis_client(self, **options: Any) -> Any:
        """A redis-py client of the broker URL, with its TLS options (not for sentinel://)."""
        import redis

        return redis.Redis.from_url(self.broker_url(), **(self.ssl_options() or {}), **options)

    def transport_options(self) -> dict[str, Any]:
        """kombu Redis transport options (see schemas/redis_transport.py)."""
        visibility = self.visibility_timeout_s
        return {
            "visibility_timeout": visibility,
            # A holder renews its leases this often: well inside the visibility timeout.
            "lease_renew_interval": max(0.5, visibility / 4),
            # Where the fetch parks an item that is not a kombu message at all.
            "dead_letter_queue": self.dead_letter_queue,
            # kombu sweeps for expired leases every interval x throttle seconds.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            "polling_interval": 1,
            **self._sentinel_options(),
        }

    def _sentinel_options(self) -> dict[str, Any]:
        if not self.broker_url().startswith("sentinel://"):
            return {}
        options: dict[str, Any] = {"master_name": self.sentinel_master}
        if self.sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": self.sentinel_password.get_secret_value()}
        return options

    def celery_config(self) -> dict[str, Any]:
        """Celery settings that make the Redis path lose nothing (see README, 'Safety')."""
        return {
            "broker_url": self.broker_url(),
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "result_accept_content": ["json"],
            "event_serializer": "json",
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_acks_on_failure_or_timeout": False,
            "task_ignore_result": True,
            # One message until the first flush shows the rows per message (prefetch.py).
            "worker_prefetch_multiplier": 1,
            # Task events for Flower; an in-process broker (the demo) has no monitor to
            # see them, and sending three per message there cost it 60% of its speed.
            "worker_send_task_events": not self.broker_url().startswith("memory://"),
            "task_send_sent_event": False,
            "task_default_queue": self.requests_queue,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": self.transport_options(),
            **({"broker_use_ssl": ssl} if (ssl := self.ssl_options()) else {}),
            "worker_hijack_root_logger": False,
            # On SIGTERM: finish the flush in hand, then requeue what is still buffered.
            "worker_soft_shutdown_timeout": 10.0,
            "worker_enable_soft_shutdown_on_idle": True,
        }


# Longest wait between two attempts to reach a lost broker (every Kafka client).
RECONNECT_BACKOFF_MAX_MS = 1_000


class KafkaSettings(BaseSettings):
    """The Kafka stream path: topics, the consumer group, credentials, poll limits."""

    model_config = _section("SCORING_KAFKA_")

    bootstrap: str = "127.0.0.1:9092"
    topic: str = names.REQUESTS_TOPIC
    results_topic: str = names.RESULTS_TOPIC
    dlq_topic: str = names.DEAD_LETTER_TOPIC
    group: str = "scoring"
    security_protocol: str = "PLAINTEXT"
    username: str | None = None
    password: SecretStr | None = None
    sasl_mechanism: str = "PLAIN"
    ssl_cafile: Path | None = None
    # Records one poll hands the scorer; with the worst batch time this must stay well
    # inside max_poll_interval_ms, or the group rebalances and redelivers (kafka-python#1401).
    max_poll_records: int = Field(default=500, ge=1)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # How long the group waits for a silent consumer (killed, frozen) before reassigning it.
    session_timeout_ms: int = Field(default=45_000, ge=6_000)
    # Run the Kafka consumer inside each `scoring worker` process too (`--kafka`).
    in_worker: bool = False
    # Ground truth that arrives later ({"request_id", "label", "model"}): stored in the
    # feedback table by every Kafka consumer of scoring (its own group); empty: not read.
    feedback_topic: str = names.FEEDBACK_TOPIC

    def client_config(self) -> dict[str, Any]:
        """Connection options shared by producers, consumers and admin clients.

        Raises ValueError naming the missing setting. The password is unwrapped only
        here: never log what this returns.
        """
        config: dict[str, Any] = {
            "bootstrap_servers": [h.strip() for h in self.bootstrap.split(",") if h.strip()],
            "security_protocol": self.security_protocol,
            # kafka-python's reconnect backoff grows to 30 s by default: after a broker
            # restart, clients then sat idle for up to 30 s with the broker back (Java: 1 s).
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.security_protocol.startswith("SASL"):
            if not self.username or self.password is None:
                raise ValueError(
                    f"SCORING_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                    "SCORING_KAFKA_USERNAME and SCORING_KAFKA_PASSWORD"
                )
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.username
            config["sasl_plain_password"] = self.password.get_secret_value()
        if self.ssl_cafile is not None:
            config["ssl_cafile"] = str(self.ssl_cafile)
        return config

    def producer_config(self, client_id: str = "scoring-producer") -> dict[str, Any]:
        """Safe producer options: all replicas acknowledge, retries cannot duplicate."""
        return {
            **self.client_config(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "client_id": client_id,
        }

    def consumer_config(self, group: str | None = None) -> dict[str, Any]:
        """Options that make the group lose nothing: manual commits, start from the
        beginning of what the group never committed."""
        session = self.session_timeout_ms
        return {
            **self.client_config(),
            "group_id": group or self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": self.max_poll_records,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "session_timeout_ms": session,
            "heartbeat_interval_ms": min(3000, session // 3),
            "client_id": "scoring-stream",
        }


class BatchingSettings(BaseSettings):
    """Micro-batches and bulk chunks (a version's own runtime settings take precedence)."""

    model_config = _section()

    max_batch_size: int = Field(default=256, ge=1)
    # Longest a request waits for its micro-batch to fill.
    max_wait_ms: float = Field(default=10.0, ge=0)
    # Bulk rows per task message.
    chunk_size: int = Field(default=256, ge=1)
    # `scoring bulk --wait`: silence after which a run's incomplete chunks go out again
    # (doubling each time); longer than a chunk can take, with a worker's lease on it.
    bulk_lease_s: float = Field(default=120.0, gt=0)


class LimitsSettings(BaseSettings):
    """What one request may carry; larger is `invalid` or a dead letter, never a crash."""

    model_config = _section()

    max_text_chars: int = Field(default=10_000, ge=1)
    max_metadata_bytes: int = Field(default=4096, ge=2)
    # A request arriving as bytes (a Kafka record) larger than this is dead-lettered
    # before it is decoded or parsed.
    max_request_bytes: int = Field(default=1024 * 1024, ge=256)
    # Keep each request's raw inputs in its result row (score_results.inputs). Off: rows
    # keep outputs, metadata and the inputs' sha256 only (inputs may be personal data).
    retain_inputs: bool = False


class RuntimeSettings(BaseSettings):
    """The model store and how a worker process runs its models."""

    model_config = _section()

    model_store: Path = Path("./model-store")
    # torch threads per worker process (the launcher splits the cores between workers).
    torch_threads: int | None = Field(default=None, ge=1)
    # This process's name in lineage and Celery (the launcher sets cpu0, gpu1, ...);
    # the host name is appended: cpu0@host.
    worker_name: str | None = None
    # Where each worker process writes its heartbeat (`<worker>.json`) after every batch,
    # for `python -m workers.health`; unset: no heartbeat.
    heartbeat_dir: Path | None = None
    # Each scoring process serves Prometheus metrics on this port (unset: none). The
    # launcher gives its N children port, port + 1, ..., port + N - 1.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Each scoring process imports torch's compiler at start and freezes its imported heap
    # (gc.freeze) before loading models, so garbage collections walk only what came after
    # (workers/runtime/heap.py); false: neither, 1-2 s quicker start.
    freeze_heap: bool = True


class GateSettings(BaseSettings):
    """The quality gate: a backend against eager fp32 on the version's held-out rows, and the
    candidate against the active version on the same rows."""

    model_config = _section("SCORING_GATE_")

    min_agreement: float = Field(default=0.99, ge=0, le=1)
    max_score_diff: float = Field(default=0.05, ge=0)
    max_accuracy_drop: float = Field(default=0.01, ge=0)
    # against the version that serves now, on the candidate's held-out rows
    max_accuracy_drop_vs_active: float = Field(default=0.01, ge=0)
    max_latency_ratio_vs_active: float = Field(default=1.5, gt=0)


class DriftSettings(BaseSettings):
    """`scoring drift`: when a window's inputs or predictions count as drifted."""

    model_config = _section("SCORING_DRIFT_")

    # Population stability index per feature and on predicted labels: 0.1 is a moderate
    # shift, 0.25 a large one. Unshifted demo traffic against its 114-row held-out
    # reference reaches 0.22 (a small reference is noisy): hence not the usual 0.2.
    psi_threshold: float = Field(default=0.25, gt=0)
    # Kolmogorov-Smirnov on the binned distributions: drifted when p < ks_alpha and the
    # statistic (the largest gap between the two CDFs) is at least ks_min_statistic: with
    # thousands of rows, gaps of a few points are "significant" and not worth an alarm.
    ks_alpha: float = Field(default=0.001, gt=0, lt=1)
    ks_min_statistic: float = Field(default=0.2, ge=0, le=1)
    # Below this many scored rows in the window there is no verdict (exit 0, said so).
    min_rows: int = Field(default=200, ge=1)
    # Accuracy on ground truth below this fails the check too (unset: not checked).
    min_accuracy: float | None = Field(default=None, ge=0, le=1)


class FlowerSettings(BaseSettings):
    """Flower, which never runs without authentication."""

    model_config = _section("SCORING_FLOWER_")

    auth: SecretStr | None = None  # user:password
    port: int = Field(default=5555, ge=1, le=65535)


class Settings(BaseModel):
    """All sections. Build it with `from_env()` at an entry point; tests build sections."""

    model_config = ConfigDict(frozen=True)

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)

    @classmethod
    def from_env(cls) -> Settings:
        """Every section from the SCORING_* environment (and defaults)."""
        return cls()

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections changed:
        `s.replace(kafka={"topic": "t"}, broker={"requests_queue": "q"})`."""
        update = {}
        for name, values in sections.items():
            current = getattr(self, name)
            # model_validate checks the values and reads no environment.
            update[name] = type(current).model_validate({**dict(current), **values})
        return self.model_copy(update=update)


SECTIONS: dict[str, type[BaseSettings]] = {
    name: field.default_factory  # type: ignore[misc]
    for name, field in Settings.model_fields.items()
}


def env_names() -> dict[str, tuple[str, str]]:
    """SCORING_* variable -> (section, field): what the README must list."""
    out: dict[str, tuple[str, str]] = {}
    for section, cls in SECTIONS.items():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            env = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
            out[env.upper()] = (section, name)
    return out
