"""A Redis Sentinel watching one primary (for failover tests): `redis-server --sentinel`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from deploy.services.common import (
    HOST,
    ServiceError,
    pid_of,
    port_open,
    run,
    stop_pid,
    tail,
    wait_until,
)


@dataclass
class SentinelServer:
    port: int
    directory: Path
    primary_port: int
    user: str
    password: str
    master_name: str = "scoring"
    down_after_ms: int = 2000
    # Also how long the sentinel leaves a replica that reports another master address
    # alone before re-pointing it (+fix-slave-config): a relay in the replication link
    # (tests/integration/sentinel_stack.py) needs it longer than the test.
    failover_timeout_ms: int = 10000

    @property
    def pidfile(self) -> Path:
        return self.directory / "sentinel.pid"

    def url(self) -> str:
        """A broker URL for kombu: the master's credentials, the sentinel's address."""
        return f"sentinel://{self.user}:{self.password}@{HOST}:{self.port}/0"

    def answers(self) -> bool:
        if not port_open(self.port):
            return False
        import redis

        try:
            return bool(redis.Redis(host=HOST, port=self.port, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def primary(self) -> tuple[str, int] | None:
        """Where the sentinel says the primary is now."""
        import redis

        client = redis.Redis(host=HOST, port=self.port, socket_timeout=2)
        found = client.sentinel_get_master_addr_by_name(self.master_name)
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return host, int(found[1])

    def start(self, timeout: float = 15.0) -> None:
        if shutil.which("redis-server") is None:
            raise ServiceError("redis-server is not installed: deploy/install-packages.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        name = self.master_name
        conf.write_text(
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {self.port}",
                    f"dir {self.directory}",
                    "daemonize yes",
                    f"pidfile {self.pidfile}",
                    f"logfile {self.directory / 'sentinel.log'}",
                    f"sentinel monitor {name} {HOST} {self.primary_port} 1",
                    f"sentinel auth-user {name} {self.user}",
                    f"sentinel auth-pass {name} {self.password}",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                ]
            )
            + "\n"
        )
        done = run(["redis-server", str(conf), "--sentinel"])
        if done.returncode != 0 or not wait_until(self.answers, timeout):
            raise ServiceError(
                f"sentinel: no answer on {HOST}:{self.port}{tail(self.directory / 'sentinel.log')}"
            )

    def stop(self) -> None:
        pid = pid_of(self.pidfile, "redis-server")
        if pid is not None:
            stop_pid(pid, "sentinel", 10)
