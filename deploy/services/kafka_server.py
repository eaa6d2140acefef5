"""The real Apache Kafka broker (KRaft: one JVM is broker and controller), from its Maven
Central jars (deploy/install-packages.sh fetches them into .services/kafka/libs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.services.common import (
    HOST,
    ROOT,
    STATE,
    ServiceError,
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


@dataclass
class KafkaServer:
    port: int
    directory: Path  # state: data/, libs/, server.properties, kafka.log, kafka.pid
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

    def answers(self, timeout_s: float = 5.0) -> bool:
        """A broker here returns metadata."""
        if not port_open(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
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

    def _configure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = TEMPLATE.read_text()
        text = text.replace("@KAFKA_PORT@", str(self.port))
        text = text.replace("@CONTROLLER_PORT@", str(self.controller_port))
        text = text.replace("@LOG_DIR@", str(self.directory / "data"))
        (self.directory / "server.properties").write_text(text)
        (self.directory / "log4j2.properties").write_text(LOG4J)

    def _format(self) -> None:
        """KRaft storage is formatted once with a cluster id; anew when the ports change."""
        data, stamp = self.directory / "data", self.directory / "data.ports"
        ports = f"{self.port} {self.controller_port}"
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
        done = subprocess.run(
            self.java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", props),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ServiceError(f"kafka: formatting {data} failed: {done.stderr[-2000:]}")
        stamp.write_text(ports)

    def start(self, timeout: float = 90.0) -> None:
        if self.answers():
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
