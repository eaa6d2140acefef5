"""docker-compose.yml: docker-compose 1.29 accepts it (so does Compose v2), with the
secrets from an env file, and it runs the system the way docs/DEPLOY.md says."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import ROOT, check_scoring_args, secret_settings, tool, unknown_settings

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCORING_SERVICES = {"migrate", "worker", "worker-gpu", "stream", "flower"}


def compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        # Only the env file may feed the interpolation, not this shell's variables.
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


@cache
def resolved() -> dict[str, Any]:
    """`docker-compose config` with .env.example: the file as Compose understands it."""
    done = compose("config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def services() -> dict[str, Any]:
    return resolved()["services"]


def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def test_docker_compose_1_29_validates_it() -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr
    version = subprocess.run(
        [tool("docker-compose"), "version", "--short"], capture_output=True, text=True
    )
    # The oldest Compose the file promises to work with; v2 reads everything 1.29 does.
    assert version.stdout.startswith("1.29"), version.stdout


def test_secrets_are_required(tmp_path: Path) -> None:
    """Without the env file's secrets Compose refuses to start, naming the missing one."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose("config", "-q", env_file=empty)
    assert done.returncode != 0
    assert "set it in .env" in done.stderr or "SCORING_FLOWER_AUTH" in done.stderr


def test_no_secret_is_written_in_the_file() -> None:
    """Every password, secret setting and Flower credential is interpolated from .env."""
    for name, service in raw()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key in secret_settings() or "PASSWORD" in key or key.endswith("_AUTH"):
                assert "${" in str(value), f"{name}: {key} must come from .env"


def test_env_example_defines_every_variable_and_no_other() -> None:
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE.read_text()))
    defined = set(env_example())
    assert used - defined == set(), "used by docker-compose.yml, missing from .env.example"
    assert defined - used == set(), "in .env.example, unused by docker-compose.yml"
    for key, value in env_example().items():
        if "PASSWORD" in key or key.endswith("_AUTH"):
            assert "change-me" in value, f"{key}: .env.example holds placeholders only"
            assert re.fullmatch(r"[A-Za-z0-9:-]+", value), f"{key}: URL-safe characters only"


def test_redis_is_durable_and_has_acl_users() -> None:
    redis = services()["redis"]
    command = command_text(redis)
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--aclfile",
    ):
        assert flag in command
    assert "user default on resetpass" in command  # no password: no login as default
    assert re.search(r"user scoring on >%s ~\* &\* \+@all\\n", command)
    assert re.search(r"user flower on >%s ~\* &\* \+@all -@dangerous", command)
    assert any(v.endswith(":/data") for v in map(volume_target, redis["volumes"]))


def volume_target(volume: Any) -> str:
    if isinstance(volume, str):
        return ":" + volume.split(":")[1]
    return f"{volume.get('source', '')}:{volume['target']}"


def test_kafka_is_the_official_image_in_step_with_the_pom() -> None:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    assert match
    version = match.group(1)
    kafka = services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{version}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert any(v.endswith(":/var/lib/kafka/data") for v in map(volume_target, kafka["volumes"]))
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_kafka_clients_authenticate_with_sasl_scram() -> None:
    env = services()["kafka"]["environment"]
    command = command_text(services()["kafka"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = [a.split("://")[0] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    assert {protocols[name] for name in advertised} == {"SASL_PLAINTEXT"}
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"  # PLAIN is not offered
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
    assert "PLAIN" not in env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert "PlainLoginModule" not in command and "sasl.mechanism=PLAIN" not in command
    assert "ScramLoginModule" in command and "sasl.mechanism=SCRAM-SHA-512" in command
    # The users are written into the KRaft metadata when the storage is formatted, with the
    # cluster id the image's own start script formats with, before that script runs.
    scram = re.findall(r'--add-scram "SCRAM-SHA-512=\[name=(\w+),password=([^\]]+)\]"', command)
    # ($$: the container's shell expands them, from the variables .env fills.)
    assert dict(scram) == {"admin": "$$JAAS_ADMIN_PASSWORD", "scoring": "$$JAAS_SCORING_PASSWORD"}
    assert env["JAAS_ADMIN_PASSWORD"] == env_example()["KAFKA_ADMIN_PASSWORD"]
    assert "kafka-storage.sh format --ignore-formatted" in command
    assert command.index("kafka-storage.sh format") < command.index("exec /etc/kafka/docker/run")
    assert '--cluster-id "$$CLUSTER_ID"' in command and env["CLUSTER_ID"]
    worker = services()["stream"]["environment"]
    assert worker["SCORING_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["SCORING_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert worker["SCORING_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert worker["SCORING_KAFKA_USERNAME"] == "scoring"
    assert worker["SCORING_KAFKA_PASSWORD"] == env["JAAS_SCORING_PASSWORD"]
    for name in SCORING_SERVICES - {"flower"}:
        mechanism = services()[name]["environment"].get("SCORING_KAFKA_SASL_MECHANISM")
        assert mechanism == "SCRAM-SHA-512", name
    # No KAFKA_* variable carries a password: the image writes those to server.properties.
    assert not [k for k in env if k.startswith("KAFKA_") and "PASSWORD" in k]


def test_postgres_has_a_volume_and_the_workers_its_password() -> None:
    postgres = services()["postgres"]
    assert any(
        v.endswith(":/var/lib/postgresql/data") for v in map(volume_target, postgres["volumes"])
    )
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password == env_example()["POSTGRES_PASSWORD"]
    url = services()["worker"]["environment"]["SCORING_DATABASE_URL"]
    assert url == f"postgresql+psycopg://scoring:{password}@postgres:5432/scoring"


def test_migration_runs_once_before_the_workers() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    for name in ("worker", "worker-gpu", "stream"):
        condition = services()[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_cpu_workers_scale() -> None:
    """`docker compose up --scale worker=N` needs no fixed name and no host port."""
    for name in ("worker", "worker-gpu", "stream"):
        service = services()[name]
        assert "container_name" not in service, name
        assert "ports" not in service, name
    assert services()["worker"]["command"][0] == "worker"
    assert services()["stream"]["command"] == ["stream"]


def test_gpu_workers_reserve_one_gpu_each() -> None:
    gpu = services()["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"] == ["worker", "--gpus", "0"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert services()["worker"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"


def test_flower_is_authenticated_and_on_loopback() -> None:
    flower = services()["flower"]
    assert flower["command"] == ["flower", "--address", "0.0.0.0"]
    assert ":" in flower["environment"]["SCORING_FLOWER_AUTH"]
    assert flower["environment"]["SCORING_BROKER_URL"].startswith("redis://flower:")
    assert [(p["host_ip"], p["published"], p["target"]) for p in long_ports(flower)] == [
        ("127.0.0.1", 5555, 5555)
    ]
    # Flower gets the broker and its credentials, nothing else.
    assert set(flower["environment"]) == {"SCORING_BROKER_URL", "SCORING_FLOWER_AUTH"}


def long_ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Ports as (host_ip, published, target), whichever syntax `config` printed."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append(
                {
                    "host_ip": port.get("host_ip"),
                    "published": int(port["published"]),
                    "target": int(port["target"]),
                }
            )
        else:
            host_ip, published, target = str(port).split("/")[0].split(":")
            out.append({"host_ip": host_ip, "published": int(published), "target": int(target)})
    return out


def test_every_host_port_is_on_loopback() -> None:
    for name, service in services().items():
        for port in long_ports(service):
            assert port["host_ip"] == "127.0.0.1", name


def test_prometheus_and_grafana_mount_their_folders() -> None:
    mounts = {name: raw()["services"][name]["volumes"] for name in ("prometheus", "grafana")}
    assert (
        "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (mounts["prometheus"])
    )
    assert "./deploy/prometheus/rules/:/etc/prometheus/rules/:ro" in mounts["prometheus"]
    assert "./deploy/grafana/provisioning/:/etc/grafana/provisioning/:ro" in mounts["grafana"]
    assert "./deploy/grafana/dashboards/:/var/lib/grafana/dashboards/:ro" in mounts["grafana"]


def test_prometheus_scrapes_every_worker_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    port = int(services()["worker"]["environment"]["SCORING_METRICS_PORT"])
    scraped = {
        name: sd["port"]
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert scraped == {"worker": port, "worker-gpu": port, "stream": port}
    for name in scraped:
        assert str(port) in services()[name]["expose"]
    assert "/etc/prometheus/rules/*.yml" in config["rule_files"]


@pytest.mark.parametrize("name", sorted(SCORING_SERVICES))
def test_scoring_services_run_real_commands_with_real_settings(name: str) -> None:
    service = services()[name]
    assert check_scoring_args(service["command"]) == []
    assert unknown_settings(service.get("environment", {})) == set()
    for key in ("SCORING_HEARTBEAT_DIR", "SCORING_MODEL_STORE"):
        if name != "flower":
            assert key in service["environment"], key


def test_signals_reach_the_workers() -> None:
    """The images' tini handles SIGTERM; compose must wait for the batch in hand."""
    for name in ("worker", "worker-gpu", "stream"):
        assert services()[name]["stop_grace_period"] in ("1m", "60s", "1m0s"), name


def test_scripts_in_commands_are_valid_shell() -> None:
    for name in ("redis", "kafka"):
        script = raw()["services"][name]["command"][2].replace("$$", "$")
        done = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr)
        # The server replaces the shell (exec), so it is PID 1's child and gets SIGTERM.
        assert re.search(r"^\s*exec ", script, re.M), name
