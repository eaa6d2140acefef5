"""Kafka from the outside: a third-party client's event is scored, `scoring produce` reports
per line, and `scoring worker --kafka` scores both sources with one model copy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.settings import KafkaSettings
from tests.helpers import demo_requests, run_scoring, wait_for
from tests.integration.kafka_stack import KafkaStack, open_stack, read_topic
from workers.sources.kafka.lag import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack(
    kafka_settings: KafkaSettings, pg_url: str, make_topic, tmp_path: Path, demo_artifact: Path
) -> Iterator[KafkaStack]:
    with open_stack(kafka_settings, pg_url, make_topic, tmp_path, demo_artifact, 2, 1) as s:
        yield s


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_scoring(*args, env=env, stdin=stdin, timeout=300)


def test_an_event_published_by_kcat_in_the_documented_format_is_scored(
    stack: KafkaStack,
) -> None:
    request = demo_requests(1, prefix="kcat", metadata={"tenant": "a"})[0]
    line = f"{request['request_id']}|{json.dumps(request)}\n"
    k = stack.kafka
    assert k.password is not None  # the suite's Kafka takes SASL logins only
    sasl = [
        *("-X", f"security.protocol={k.security_protocol.lower()}"),
        # PLAIN: kcat 1.7's librdkafka (2.0.2) fails SCRAM logins that the broker and
        # kafka-python agree on; the broker takes both, for the same users.
        *("-X", "sasl.mechanisms=PLAIN"),
        *("-X", f"sasl.username={k.username}"),
        *("-X", f"sasl.password={k.password.get_secret_value()}"),
    ]
    kcat = subprocess.run(
        ["kcat", "-P", "-b", stack.bootstrap, *sasl, "-t", stack.requests, "-K", "|"],
        input=line.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert kcat.returncode == 0, kcat.stderr
    stack.start("stream-a")
    wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") == 1, timeout=180)
    row = stack.rows("SELECT request_id, status, source, metadata FROM score_results")[0]
    assert tuple(row) == ("kcat-0", "ok", "kafka", {"tenant": "a"})
    (event,) = read_topic(stack.client, stack.results, at_least=1)
    body = json.loads(event.value)
    assert event.key == b"kcat-0" and (body["request_id"], body["status"]) == ("kcat-0", "ok")
    assert body["model"] == "demo" and body["model_version"] == 1 and body["outputs"]["label"]


def test_worker_with_kafka_scores_both_sources_in_one_process(
    stack: KafkaStack, redis_url: str, tmp_path: Path
) -> None:
    queue = f"score-requests-test-{uuid.uuid4().hex[:8]}"
    env = {
        **stack.env,
        "SCORING_BROKER_URL": redis_url,
        "SCORING_REQUESTS_QUEUE": queue,
        "SCORING_DEAD_LETTER_QUEUE": f"{queue}.dlq",
        "SCORING_WORKER_FLUSH_INTERVAL_S": "0.02",
    }
    kafka_lines = [json.dumps(r) for r in demo_requests(1_000, prefix="k")]
    kafka_lines.insert(10, '{"request_id": "oops"}')  # line 11: not a valid request
    (tmp_path / "kafka.jsonl").write_text("\n".join(kafka_lines) + "\n")
    sent = cli(env, "produce", "--kafka", "--file", str(tmp_path / "kafka.jsonl"))
    assert sent.returncode == 1, sent.stderr
    assert "1000 requests confirmed" in sent.stdout and "1 lines rejected" in sent.stdout
    assert "line 11: model: Field required" in " ".join(sent.stderr.split())
    redis_lines = "\n".join(json.dumps(r) for r in demo_requests(1_000, prefix="q"))
    sent = cli(env, "produce", "--redis", stdin=redis_lines)
    assert sent.returncode == 0 and "1000 requests confirmed" in sent.stdout, sent.stderr

    stack.procs["worker"] = subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "worker", "--cpu", "1", "--kafka"],
        env=env,
        stdout=(tmp_path / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: stack.scalar("SELECT count(*) FROM score_results") >= 2_000, timeout=240)
    by_source = dict(
        stack.rows("SELECT source || ':' || worker, count(*) FROM score_results GROUP BY 1")
    )
    host = socket.gethostname()
    assert by_source == {f"kafka:cpu0@{host}": 1_000, f"redis:cpu0@{host}": 1_000}
    assert stack.stop("worker") == 0
    log = stack.log("worker")
    assert log.count("warmed up demo v1") == 1  # one model copy serves both sources
    assert sum(p.lag for p in consumer_lag(stack.settings().kafka)) == 0
