"""The local Redis, PostgreSQL and Kafka that `make services` and the test suite use.

`up()` starts what is not already answering (idempotent: a running service is reused)
and returns its URLs; pytest's session fixtures call it directly, and
`python -m deploy.services up|down|env|status [redis postgres kafka]` is the same from a
shell. Everything listens on 127.0.0.1 only and keeps its state under .services/.
Installing the packages is deploy/install-packages.sh's job, not this module's.

Ports: SCORING_TEST_REDIS_PORT (6379), SCORING_TEST_PG_PORT (5432),
SCORING_TEST_KAFKA_PORT (9092; its controller uses the next port).

Every service authenticates its clients: Redis ACL users `scoring` and `flower` (nobody
logs in as `default`), the PostgreSQL role `scoring` (scram-sha-256), and Kafka's SASL
listener (SCRAM-SHA-512, user `scoring`). The passwords are made once per checkout in
.services/credentials.json (mode 600); `env` prints them as SCORING_* settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from deploy.services.common import STATE, ServiceError, credentials, locked, log
from deploy.services.kafka_server import BROKER_USER, CLIENT_USER, KafkaServer
from deploy.services.postgres_server import PostgresServer
from deploy.services.redis_server import RedisServer

ALL = ("redis", "postgres", "kafka")

__all__ = ["ALL", "Endpoints", "ServiceError", "down", "kafka", "postgres", "redis", "up"]


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def redis() -> RedisServer:
    creds = credentials()
    return RedisServer(
        port=_port("SCORING_TEST_REDIS_PORT", 6379),
        directory=STATE / "redis",
        users={"scoring": creds["redis_scoring"], "flower": creds["redis_flower"]},
    )


def postgres() -> PostgresServer:
    return PostgresServer(
        port=_port("SCORING_TEST_PG_PORT", 5432), password=credentials()["postgres_scoring"]
    )


def kafka() -> KafkaServer:
    creds = credentials()
    return KafkaServer(
        port=_port("SCORING_TEST_KAFKA_PORT", 9092),
        directory=STATE / "kafka",
        users={CLIENT_USER: creds["kafka_scoring"], BROKER_USER: creds["kafka_broker"]},
    )


@dataclass(frozen=True)
class Endpoints:
    """What a client needs: URLs with credentials (secrets: never print them in CI logs)."""

    broker_url: str | None = None
    flower_broker_url: str | None = None
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    # SCORING_KAFKA_{BOOTSTRAP,SECURITY_PROTOCOL,SASL_MECHANISM,USERNAME,PASSWORD}
    kafka_env: dict[str, str] | None = None

    def env(self) -> dict[str, str]:
        """As SCORING_* settings."""
        out = {
            "SCORING_BROKER_URL": self.broker_url,
            "SCORING_DATABASE_URL": self.database_url,
            "SCORING_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            **(self.kafka_env or {}),
        }
        return {k: v for k, v in out.items() if v}


def endpoints(names: tuple[str, ...] = ALL) -> Endpoints:
    """The URLs of the named services (whether or not they run)."""
    return Endpoints(
        broker_url=redis().url() if "redis" in names else None,
        flower_broker_url=redis().url("flower") if "redis" in names else None,
        database_url=postgres().url() if "postgres" in names else None,
        kafka_bootstrap=kafka().bootstrap if "kafka" in names else None,
        kafka_env=kafka().client_env() if "kafka" in names else None,
    )


def up(names: tuple[str, ...] = ALL) -> Endpoints:
    """Start the named services that are not answering; their endpoints."""
    unknown = set(names) - set(ALL)
    if unknown:
        raise ServiceError(f"unknown service(s) {sorted(unknown)}; expected {', '.join(ALL)}")
    with locked():
        for name in names:
            server = {"redis": redis, "postgres": postgres, "kafka": kafka}[name]()
            if not server.answers() or getattr(server, "stale", bool)():
                log(f"{name}: starting")
                server.start()
                log(f"{name}: up")
    return endpoints(names)


def down(names: tuple[str, ...] = ALL) -> None:
    """Stop what this module started (consumers of the others first)."""
    with locked():
        for name in reversed(names):
            {"redis": redis, "postgres": postgres, "kafka": kafka}[name]().stop()
            log(f"{name}: stopped")


def status(names: tuple[str, ...] = ALL) -> dict[str, bool]:
    return {
        name: {"redis": redis, "postgres": postgres, "kafka": kafka}[name]().answers()
        for name in names
    }
