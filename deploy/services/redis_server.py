"""A Redis server of our own: loopback only, ACL users, AOF, `noeviction`.

Nobody can log in as `default`; `scoring` (workers, producers, tests) and `flower` (no
dangerous commands) log in with passwords. The append-only file is fsynced every second
and the server never evicts a key under memory pressure, so a restart keeps every queued
and unacknowledged message it had acknowledged writing a second before.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from deploy.services.common import (
    HOST,
    ServiceError,
    log,
    pid_of,
    port_open,
    run,
    stop_pid,
    tail,
    wait_until,
)


@dataclass
class RedisServer:
    port: int
    directory: Path
    users: dict[str, str]  # user -> password
    appendfsync: str = "everysec"
    extra: list[str] = field(default_factory=list)  # more config lines (TLS, replicaof)

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.directory / "redis.log"

    def url(self, user: str = "scoring", db: int = 0) -> str:
        password = quote(self.users[user], safe="")
        return f"redis://{user}:{password}@{HOST}:{self.port}/{db}"

    def client(self, user: str = "scoring"):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url(user), socket_timeout=3, socket_connect_timeout=3)

    def answers(self) -> bool:
        """Our server is up and our credentials work."""
        if not port_open(self.port):
            return False
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def pid(self) -> int | None:
        return pid_of(self.pidfile, "redis-server")

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        acl = self.directory / "users.acl"
        # `default` has no password at all, so no client can log in as it, and an
        # unauthenticated connection is refused (NOAUTH). It is not switched `off`: on Redis
        # 7.0 the append-only file is replayed as `default`, and with it off every MULTI/EXEC
        # and script in the file fails with NOPERM at start, losing queued messages.
        lines = ["user default on resetpass ~* &* +@all"]
        for user, password in self.users.items():
            rights = "+@all" if user == "scoring" else "+@all -@dangerous"
            lines.append(f"user {user} on >{password} ~* &* {rights}")
        acl.write_text("\n".join(lines) + "\n")
        acl.chmod(0o600)
        conf = self.directory / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {self.port}",
                    f"dir {self.directory}",
                    "daemonize yes",
                    f"pidfile {self.pidfile}",
                    f"logfile {self.logfile}",
                    "protected-mode yes",
                    f"aclfile {acl}",
                    # Durability: queued and unacknowledged messages survive a restart.
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    'save ""',
                    # A full broker refuses writes instead of dropping queued messages.
                    "maxmemory-policy noeviction",
                    *self.extra,
                ]
            )
            + "\n"
        )
        return conf

    def start(self, timeout: float = 15.0) -> None:
        """Start (or reuse) the server; ServiceError says why it cannot."""
        if self.answers():
            return
        if self.pid() is not None:
            raise ServiceError(
                f"redis: our server (pid {self.pid()}) runs but does not answer on port "
                f"{self.port}; stop it: python -m deploy.services down redis"
            )
        if port_open(self.port):
            raise ServiceError(
                f"redis: port {self.port} is taken by a server that refuses our credentials; "
                f"stop it or pick another port: SCORING_TEST_REDIS_PORT={self.port + 10}"
            )
        if shutil.which("redis-server") is None:
            raise ServiceError("redis: redis-server is not installed: deploy/install-packages.sh")
        conf = self.write_config()
        done = run(["redis-server", str(conf)])
        if done.returncode != 0 or not wait_until(self.answers, timeout):
            raise ServiceError(
                f"redis: no answer on {HOST}:{self.port} after {timeout:.0f}s"
                f"{tail(self.logfile)}\n{done.stderr}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, "redis", timeout)

    def kill(self) -> None:
        """SIGKILL: what the OOM killer or a crash does (the AOF's last second may go)."""
        import signal

        pid = self.pid()
        if pid is not None:
            stop_pid(pid, "redis", 10, sig=signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
        log(f"redis: restarted on {HOST}:{self.port}")
