"""A Redis primary, one replica and a Sentinel, each a real process of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.services.redis_server import RedisServer
from deploy.services.sentinel_server import SentinelServer
from tests.helpers import free_port, wait_for

PASSWORD = "sentinel-test-pw-1"


@dataclass
class SentinelStack:
    primary: RedisServer
    replica: RedisServer
    sentinel: SentinelServer

    def url(self) -> str:
        return self.sentinel.url()


def in_sync(replica: RedisServer) -> bool:
    info = replica.client().info("replication")
    return bool(info.get("master_link_status") == "up")


@contextmanager
def sentinel_stack(tmp_path: Path) -> Iterator[SentinelStack]:
    users = {"scoring": PASSWORD}
    primary = RedisServer(free_port(), tmp_path / "primary", users)
    primary.start()
    auth = ["masteruser scoring", f"masterauth {PASSWORD}"]
    replica = RedisServer(
        free_port(),
        tmp_path / "replica",
        users,
        extra=[f"replicaof 127.0.0.1 {primary.port}", *auth],
    )
    primary.extra = auth  # should it become a replica after a failover
    sentinel = SentinelServer(free_port(), tmp_path / "sentinel", primary.port, "scoring", PASSWORD)
    try:
        replica.start()
        wait_for(lambda: in_sync(replica), timeout=30, every=0.2)
        sentinel.start()
        yield SentinelStack(primary, replica, sentinel)
    finally:
        sentinel.stop()
        replica.kill()
        primary.kill()
