"""A Redis primary, one replica and a Sentinel, each a real process of the test's own;
optionally with a relay in the replication link (tests/integration/replication_relay.py)
and a fast failover."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.services.redis_server import RedisServer
from deploy.services.sentinel_server import SentinelServer
from tests.helpers import free_port, wait_for
from tests.integration.replication_relay import ReplicationRelay

PASSWORD = "sentinel-test-pw-1"


@dataclass
class SentinelStack:
    primary: RedisServer
    replica: RedisServer
    sentinel: SentinelServer
    relay: ReplicationRelay | None = None

    def url(self) -> str:
        return self.sentinel.url()

    def promoted(self) -> bool:
        """The sentinel names the replica as the primary, and the replica agrees."""
        if self.sentinel.primary() != ("127.0.0.1", self.replica.port):
            return False
        return bool(self.replica.client().info("replication").get("role") == "master")


def in_sync(replica: RedisServer) -> bool:
    info = replica.client().info("replication")
    return bool(info.get("master_link_status") == "up")


@contextmanager
def sentinel_stack(
    tmp_path: Path, relay: bool = False, down_after_ms: int = 2000
) -> Iterator[SentinelStack]:
    """With `relay`, the replica replicates through a ReplicationRelay, and the sentinel
    waits 10 minutes before re-pointing it at the primary's own address (its failover
    timeout, which does not slow a failover with one replica)."""
    users = {"scoring": PASSWORD}
    primary = RedisServer(free_port(), tmp_path / "primary", users)
    primary.start()
    link = ReplicationRelay(primary.port) if relay else None
    auth = ["masteruser scoring", f"masterauth {PASSWORD}"]
    replica = RedisServer(
        free_port(),
        tmp_path / "replica",
        users,
        extra=[f"replicaof 127.0.0.1 {link.port if link else primary.port}", *auth],
    )
    primary.extra = auth  # should it become a replica after a failover
    sentinel = SentinelServer(
        free_port(),
        tmp_path / "sentinel",
        primary.port,
        "scoring",
        PASSWORD,
        down_after_ms=down_after_ms,
        failover_timeout_ms=600_000 if relay else 10_000,
    )
    try:
        replica.start()
        wait_for(lambda: in_sync(replica), timeout=30, every=0.2)
        sentinel.start()
        yield SentinelStack(primary, replica, sentinel, link)
    finally:
        sentinel.stop()
        replica.kill()
        primary.kill()
        if link is not None:
            link.close()
