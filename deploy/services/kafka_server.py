"""The real Apache Kafka broker (KRaft: one JVM is broker and controller), from its Maven
Central jars (deploy/install-packages.sh fetches them into .services/kafka/libs).

Clients must authenticate: the client listener is SASL_PLAINTEXT with SCRAM-SHA-512, and
the users (`scoring`, and `broker` for the broker's own connections) are written into the
metadata log when the storage is formatted. `extra` lines (a TLS listener) are appended to
server.properties; the later of two equal keys wins.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.services.common import (
    HOST,
    ROOT,
    STATE,
    ServiceError,
    log,
    pid_of,
    port_open,
    stop_pid,
    tail,
    wait_until,
)

TEMPLATE = ROOT / "deploy" / "kafka" / "server.properties"
POM = ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def kafka_version() -> str:
    found = re.search(r"<kafka.version>(.*?)</kafka.version>", POM.read_text())
    if not found:
        raise ServiceError(f"kafka: no <kafka.version> in {POM}")
    return found.group(1)


MECHANISM = "SCRAM-SHA-512"
CLIENT_USER = "scoring"
BROKER_USER = "broker"


@dataclass
class KafkaServer:
    port: int
    directory: Path  # state: data/, libs/, server.properties, kafka.log, kafka.pid
    users: dict[str, str]  # SCRAM user -> password; CLIENT_USER and BROKER_USER at least
    extra: list[str] = field(default_factory=list)  # more properties (a TLS listener)
    heap: str = os.environ.get("KAFKA_HEAP_OPTS", "-Xmx512m -Xms128m")
    libs: Path = STATE / "kafka" / "libs"  # the jar cache, shared by every broker we start

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def logfile(self) -> Path:
        return self.directory / "kafka.log"

    def java(self, *args: str) -> list[str]:
        return [
            "java",
            *self.heap.split(),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def client_env(self, user: str = CLIENT_USER) -> dict[str, str]:
        """SCORING_KAFKA_* settings of a client logging in as `user` (a secret: never print
        it in CI logs)."""
        return {
            "SCORING_KAFKA_BOOTSTRAP": self.bootstrap,
            "SCORING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SCORING_KAFKA_SASL_MECHANISM": MECHANISM,
            "SCORING_KAFKA_USERNAME": user,
            "SCORING_KAFKA_PASSWORD": self.users[user],
        }

    def client_config(self, user: str = CLIENT_USER) -> dict[str, Any]:
        """kafka-python options of a client logging in as `user`."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.users[user],
        }

    def answers(self, timeout_s: float = 5.0) -> bool:
        """A broker here returns metadata to our credentials."""
        if not port_open(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                **self.client_config(),
                client_id="scoring-services",
                request_timeout_ms=int(timeout_s * 1000),
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def pid(self) -> int | None:
        return pid_of(self.pidfile, "kafka.Kafka")

    def properties(self) -> str:
        """server.properties: the template, the broker's own SCRAM login on every SASL
        listener, then `extra`."""
        text = TEMPLATE.read_text()
        text = text.replace("@KAFKA_PORT@", str(self.port))
        text = text.replace("@CONTROLLER_PORT@", str(self.controller_port))
        text = text.replace("@LOG_DIR@", str(self.directory / "data"))
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{self.users[BROKER_USER]}";'
        )
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule required " + " ".join(
            [
                f'username="{BROKER_USER}" password="{self.users[BROKER_USER]}"',
                *(f'user_{u}="{p}"' for u, p in sorted(self.users.items())),
            ]
        )
        lines = []
        for name in ("sasl_plaintext", "sasl_ssl"):
            lines.append(f"listener.name.{name}.{MECHANISM.lower()}.sasl.jaas.config={login}")
            lines.append(f"listener.name.{name}.plain.sasl.jaas.config={plain};")
        return text + "\n# --- deploy/services ---\n" + "\n".join([*lines, *self.extra]) + "\n"

    def _configure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        props = self.directory / "server.properties"
        props.write_text(self.properties())
        props.chmod(0o600)  # the broker's password
        (self.directory / "log4j2.properties").write_text(LOG4J)

    def _stamp(self) -> str:
        """What the formatted storage depends on: the ports and the SCRAM users."""
        users = ";".join(f"{u}:{p}" for u, p in sorted(self.users.items()))
        digest = hashlib.sha256(users.encode()).hexdigest()[:16]
        return f"{self.port} {self.controller_port} scram:{digest}"

    def _format(self) -> None:
        """KRaft storage is formatted once with a cluster id and the SCRAM users; anew when
        the ports or the users change."""
        data, stamp = self.directory / "data", self.directory / "data.ports"
        ports = self._stamp()
        if (data / "meta.properties").exists() and stamp.exists() and stamp.read_text() == ports:
            return
        subprocess.run(["rm", "-rf", str(data)], check=True)
        made = subprocess.run(
            self.java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True
        )
        cluster = (made.stdout.strip().splitlines() or [""])[-1]
        if not re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster):
            raise ServiceError(f"kafka: no cluster id from StorageTool: {made.stderr[-2000:]}")
        props = str(self.directory / "server.properties")
        scram: list[str] = []
        for user, password in sorted(self.users.items()):
            scram += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        done = subprocess.run(
            self.java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", props, *scram),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ServiceError(f"kafka: formatting {data} failed: {done.stderr[-2000:]}")
        stamp.write_text(ports)

    def stale(self) -> bool:
        """Our broker runs with another configuration than this checkout's (e.g. from
        before SASL): `start()` restarts it."""
        props = self.directory / "server.properties"
        if self.pid() is None:
            return False
        return not props.exists() or props.read_text() != self.properties()

    def start(self, timeout: float = 90.0) -> None:
        if self.stale():
            log("kafka: the running broker's configuration is out of date; restarting it")
            self.stop()
        elif self.answers():
            return
        if self.pid() is None:
            for port in (self.port, self.controller_port):
                if port_open(port):
                    raise ServiceError(
                        f"kafka: port {port} is taken by something that is not our broker; "
                        f"pick another base port: SCORING_TEST_KAFKA_PORT={self.port + 10}"
                    )
            if not (self.libs / ".complete").exists():
                raise ServiceError(
                    f"kafka: no broker jars in {self.libs}: run deploy/install-packages.sh"
                )
            self._configure()
            self._format()
            with self.logfile.open("ab") as log_fh:
                # setsid: the broker outlives this process and its terminal.
                proc = subprocess.Popen(
                    self.java("kafka.Kafka", str(self.directory / "server.properties")),
                    cwd=self.directory,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.pidfile.write_text(str(proc.pid))
        if not wait_until(lambda: self.pid() is not None and self.answers(2.0), timeout, 0.5):
            raise ServiceError(
                f"kafka: no metadata from {self.bootstrap} after {timeout:.0f}s{tail(self.logfile)}"
            )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: a clean shutdown (a few seconds)."""
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, "kafka", timeout)

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, "kafka", 10, sig=signal.SIGKILL)
