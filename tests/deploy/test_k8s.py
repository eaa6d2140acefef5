"""deploy/k8s: every overlay renders with kustomize and validates offline with kubeconform
against the vendored Kubernetes and KEDA schemas, and the manifests keep what
docs/DEPLOY.md promises (probes, budgets, GPUs, autoscaling on the right queue)."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KUBERNETES_VERSION,
    ROOT,
    SCHEMAS,
    check_scoring_args,
    secret_settings,
    tool,
    unknown_settings,
)

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
WORKERS = ("worker-cpu", "worker-gpu", "stream")
# docs/DEPLOY.md: the requests topic is created with this many partitions; a stream
# worker beyond it would sit idle.
TOPIC_PARTITIONS = 8
# Trigger metadata KEDA 2.20's scalers read (pkg/scalers/{redis,kafka}_scaler.go).
KEDA_METADATA = {
    "redis": {
        "address",
        "addressFromEnv",
        "host",
        "port",
        "listName",
        "listLength",
        "activationListLength",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
    },
    "kafka": {
        "bootstrapServers",
        "consumerGroup",
        "topic",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "sasl",
        "tls",
        "unsafeSsl",
        "version",
    },
}
SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


@cache
def rendered(overlay: str) -> str:
    done = subprocess.run(
        [tool("kustomize"), "build", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@cache
def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(rendered(overlay)) if d)


def find(overlay: str, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects(overlay)
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = find(overlay, kind, name)
    return found


def kubeconform(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-kubernetes-version",
            KUBERNETES_VERSION,
            # Vendored schemas only: no download, and a kind without one fails.
            "-schema-location",
            str(SCHEMAS) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def settings(overlay: str) -> dict[str, str]:
    (config,) = [
        c for c in find(overlay, "ConfigMap") if "scoring-settings" in c["metadata"]["name"]
    ]
    return config["data"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_overlays_exist() -> None:
    assert OVERLAYS == ["cpu-only", "production", "production-hpa"]


def test_every_overlay_validates(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered(overlay))
    done = kubeconform(path)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(objects(overlay))
    assert f"{count} resources found in 1 file - Valid: {count}," in done.stdout


def test_the_schemas_reject_mistakes(tmp_path: Path) -> None:
    """Strict schemas: an unknown field, a misspelt KEDA field, a number where KEDA wants a
    string, and a kind with no vendored schema all fail."""
    text = rendered("production")
    broken = [
        text.replace("  revisionHistoryLimit: 5", "  revisionHistoryLimt: 5", 1),
        text.replace("  maxReplicaCount: 20", "  maxReplicas: 20", 1),
        text.replace('lagThreshold: "4000"', "lagThreshold: 4000", 1),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n",
    ]
    for i, manifest in enumerate(broken):
        assert manifest != text
        path = tmp_path / f"broken{i}.yaml"
        path.write_text(manifest)
        assert kubeconform(path).returncode != 0, manifest[:80]


def test_a_deployment_per_device_class() -> None:
    cpu = containers(one("production", "Deployment", "worker-cpu"))[0]
    gpu = containers(one("production", "Deployment", "worker-gpu"))[0]
    assert cpu["args"][:2] == ["worker", "--cpu"]
    # One process per GPU, pinned: each pod gets one GPU and sees it as index 0.
    assert gpu["args"] == ["worker", "--gpus", "0"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    assert gpu["image"].split(":")[0].endswith("scoring-workers-gpu")
    assert containers(one("production", "Deployment", "stream"))[0]["args"] == ["stream"]


def test_cpu_only_has_no_gpu_objects() -> None:
    assert [o for o in objects("cpu-only") if o["metadata"]["name"] == "worker-gpu"] == []
    assert "nvidia.com/gpu" not in rendered("cpu-only")


@pytest.mark.parametrize("name", WORKERS)
def test_probes_wait_for_warm_up_and_check_consumption(name: str) -> None:
    container = containers(one("production", "Deployment", name))[0]
    ready = ["python", "-m", "workers.health", "--ready"]
    assert container["startupProbe"]["exec"]["command"] == ready
    assert container["readinessProbe"]["exec"]["command"] == ready
    assert container["livenessProbe"]["exec"]["command"] == [
        "python",
        "-m",
        "workers.health",
        "--max-age",
        "120",
    ]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # compiled warm-up
    # The probe reads the heartbeats the worker writes there.
    assert "SCORING_HEARTBEAT_DIR" in settings("production")
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


@pytest.mark.parametrize("name", WORKERS)
def test_grace_period_covers_a_batch(name: str) -> None:
    """Celery's soft shutdown plus a batch waiting through every database retry, with
    room for the batch itself: what SIGTERM has to finish before the kill."""
    from schemas.settings import BrokerSettings

    config = settings("production")
    retries, backoff = (
        int(config["SCORING_DB_RETRIES"]),
        float(config["SCORING_DB_RETRY_BACKOFF_S"]),
    )
    retrying = backoff * (2**retries - 1)
    soft = float(BrokerSettings().celery_config()["worker_soft_shutdown_timeout"])
    grace = one("production", "Deployment", name)["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] >= soft + retrying + 30


@pytest.mark.parametrize("name", WORKERS)
def test_disruption_budget_and_rollout(name: str) -> None:
    deployment = one("production", "Deployment", name)
    budget = one("production", "PodDisruptionBudget", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pods_run_unprivileged(overlay: str) -> None:
    pods = [o for o in objects(overlay) if o["kind"] in ("Deployment", "Job")]
    for obj in pods:
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] == 10001  # the images' USER
        assert spec["serviceAccountName"] == "scoring"
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"], obj["metadata"]["name"]
            assert container["resources"]["limits"]["memory"]
    namespace = one(overlay, "Namespace", "scoring")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_are_the_two_project_images_with_tags(overlay: str) -> None:
    for obj in objects(overlay):
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                name, _, tag = container["image"].rpartition(":")
                assert name.rsplit("/", 1)[-1] in ("scoring-workers", "scoring-workers-gpu")
                assert tag and tag != "latest"


def test_commands_are_real_scoring_commands(overlay: str) -> None:
    for obj in objects(overlay):
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                assert check_scoring_args(container["args"]) == [], obj["metadata"]["name"]
    job = one(overlay, "Job", "scoring-migrate")
    assert containers(job)[0]["args"] == ["db", "upgrade"]


def test_settings_are_real_and_not_secret(overlay: str) -> None:
    config = settings(overlay)
    assert unknown_settings(config) == set()
    assert set(config) & secret_settings() == set()
    for obj in objects(overlay):
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                env = env_of(container)
                assert unknown_settings(env) == set()
                for name in set(env) & secret_settings():
                    assert "secretKeyRef" in env[name].get("valueFrom", {}), name


def secret_keys() -> dict[str, str]:
    text = (K8S / "base" / "secrets.env.example").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_secret_keys_are_the_documented_ones(overlay: str) -> None:
    used = set(re.findall(r"key: ([\w-]+)", yaml.safe_dump_all(objects(overlay))))
    refs = set()
    for obj in objects(overlay):
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "scoring-secrets"
                        refs.add(ref["key"])
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"]["secretTargetRef"]:
                assert ref["name"] == "scoring-secrets"
                refs.add(ref["key"])
    assert refs <= set(secret_keys()), refs - set(secret_keys())
    assert refs <= used
    if overlay == "production":
        assert set(secret_keys()) == refs, "secrets.env.example lists a key nothing reads"


def test_model_store_is_shared() -> None:
    claim = one("production", "PersistentVolumeClaim", "model-store")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    store = settings("production")["SCORING_MODEL_STORE"]
    for name, read_only in (("worker-cpu", True), ("stream", True), ("worker-gpu", False)):
        mount = next(
            m
            for m in containers(one("production", "Deployment", name))[0]["volumeMounts"]
            if m["mountPath"] == store
        )
        # GPU workers cache TensorRT engines next to the artifact.
        assert mount.get("readOnly", False) is read_only, name


def test_flower_behind_an_authenticated_tls_ingress() -> None:
    flower = containers(one("production", "Deployment", "flower"))[0]
    assert flower["args"] == ["flower", "--address", "0.0.0.0"]
    env = env_of(flower)
    assert env["SCORING_FLOWER_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "flower-auth"
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    ingress = one("production", "Ingress", "flower")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"]
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    host = ingress["spec"]["rules"][0]["host"]
    assert ingress["spec"]["tls"][0]["hosts"] == [host]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one("production", "Service", backend["name"])
    assert service["spec"]["type"] == "ClusterIP"
    labels = one("production", "Deployment", "flower")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def redis_lists() -> set[str]:
    """The requests queue and kombu's priority lists for it."""
    from kombu.transport import redis as kombu_redis

    from schemas.settings import BrokerSettings

    queue = BrokerSettings().requests_queue
    steps = (
        BrokerSettings()
        .transport_options()
        .get("priority_steps", kombu_redis.Channel.priority_steps)
    )
    sep = kombu_redis.Channel.sep
    return {queue if step == 0 else f"{queue}{sep}{step}" for step in steps}


@pytest.mark.parametrize("overlay_name", ["production", "cpu-only"])
def test_keda_scales_celery_workers_on_every_queue_list(overlay_name: str) -> None:
    from schemas.settings import BrokerSettings

    queue = settings(overlay_name)["SCORING_REQUESTS_QUEUE"]
    assert queue == BrokerSettings().requests_queue and queue in redis_lists()
    for scaled in find(overlay_name, "ScaledObject"):
        triggers = scaled["spec"]["triggers"]
        kinds = {t["type"] for t in triggers}
        if kinds != {"redis"}:
            continue
        assert scaled["spec"]["scaleTargetRef"]["name"] in ("worker-cpu", "worker-gpu")
        assert {t["metadata"]["listName"] for t in triggers} == redis_lists()
        names = {t["name"] for t in triggers}
        modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
        # The backlog is the sum of the lists, not the longest one.
        assert set(re.split(r"\s*\+\s*", modifiers["formula"])) == names
        assert modifiers["metricType"] == "AverageValue"
        for trigger in triggers:
            assert set(trigger["metadata"]) <= KEDA_METADATA["redis"]
            assert trigger["authenticationRef"]["name"] == "redis-queue"


def test_keda_scales_stream_workers_on_the_group_lag() -> None:
    from schemas.settings import KafkaSettings

    config = settings("production")
    scaled = one("production", "ScaledObject", "stream")
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert set(meta) <= KEDA_METADATA["kafka"]
    assert meta["consumerGroup"] == config["SCORING_KAFKA_GROUP"] == KafkaSettings().group
    assert meta["topic"] == config["SCORING_KAFKA_TOPIC"] == KafkaSettings().topic
    assert meta["bootstrapServers"] == config["SCORING_KAFKA_BOOTSTRAP"]
    assert meta["sasl"] == SASL[config["SCORING_KAFKA_SASL_MECHANISM"]]
    tls = config["SCORING_KAFKA_SECURITY_PROTOCOL"] in ("SSL", "SASL_SSL")
    assert meta["tls"] == ("enable" if tls else "disable")
    # Lag counted the way the workers start a new group.
    assert meta["offsetResetPolicy"] == KafkaSettings().consumer_config()["auto_offset_reset"]
    assert scaled["spec"]["maxReplicaCount"] <= TOPIC_PARTITIONS
    assert trigger["authenticationRef"]["name"] == "kafka-lag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_logins_are_scram_never_plain(overlay: str) -> None:
    """Every overlay's pods log in to Kafka with SCRAM-SHA-512 over TLS, as the suite's own
    broker does; PLAIN (the password itself on the wire) appears nowhere in deploy/k8s."""
    config = settings(overlay)
    assert config["SCORING_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["SCORING_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    for path in K8S.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"MECHANISM=PLAIN|sasl: plaintext|PlainLoginModule", text), path


def test_hpa_is_the_keda_equivalent() -> None:
    for name in WORKERS:
        keda = one("production", "ScaledObject", name)["spec"]
        hpa = one("production-hpa", "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"]["name"] == keda["scaleTargetRef"]["name"] == name
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
            keda["minReplicaCount"],
            keda["maxReplicaCount"],
        )
        target = hpa["metrics"][0]["external"]["target"]["averageValue"]
        if "scalingModifiers" in keda.get("advanced", {}):
            assert target == keda["advanced"]["scalingModifiers"]["target"]
        else:
            assert target == keda["triggers"][0]["metadata"]["lagThreshold"]
        assert hpa["behavior"] == keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert find("production-hpa", "ScaledObject") == []


def test_docs_name_the_partition_count() -> None:
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert f"--partitions {TOPIC_PARTITIONS}" in text
