"""The metrics hook counts what each micro-batch became, exactly, and serves it over HTTP."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.settings import BrokerSettings
from schemas.tables import utcnow
from tests.helpers import demo_requests, free_port
from workers import launcher
from workers.core.service import ScoringService
from workers.hooks import BatchReport
from workers.hooks.metrics import WorkerMetrics, reason_class
from workers.sources.base import Outcome, WorkItem


def value(m: WorkerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def row(status: str, source: str = "redis", queue_ms: float | None = 5.0) -> dict[str, Any]:
    return {
        "model_name": "demo",
        "model_version": 1,
        "source": source,
        "status": status,
        "queue_ms": queue_ms,
    }


def call(size: int, inference_ms: float) -> dict[str, Any]:
    return {
        "model_name": "demo",
        "model_version": 1,
        "batch_size": size,
        "inference_ms": inference_ms,
    }


def requests(m: WorkerMetrics, status: str, source: str = "redis", model: str = "demo") -> float:
    version = "1" if model == "demo" else "unknown"
    return value(
        m, "scoring_requests_total", model=model, version=version, source=source, status=status
    )


def test_a_stored_batch_counts_each_request_by_status_and_times_each_model_call() -> None:
    m = WorkerMetrics("cpu0@h")
    items = [WorkItem({}, "redis") for _ in range(5)] + [WorkItem(b"x", "kafka")]
    dead = items[-1]
    dead.outcome, dead.reason = Outcome.DEAD, "not JSON: Expecting value"
    m.before_batch(items)
    assert value(m, "scoring_batches_in_flight") == 1
    report = BatchReport(
        rows=[row("ok"), row("ok"), row("error"), row("invalid", queue_ms=None), row("expired")],
        calls=[call(3, 2.0)],
        dead=[dead],
        stored=True,
    )
    m.after_batch(items, 0.02, report)
    assert value(m, "scoring_batches_in_flight") == 0
    assert requests(m, "ok") == 2 and requests(m, "error") == 1
    assert requests(m, "invalid") == 1 and requests(m, "expired") == 1
    assert requests(m, "dead", source="kafka", model="unknown") == 1
    assert value(m, "scoring_dead_letters_total", source="kafka", reason="not_json") == 1
    # one queue wait per request that reached a model call (ok, error), none for the rest
    assert value(m, "scoring_queue_wait_seconds_count", source="redis") == 3
    assert value(m, "scoring_queue_wait_seconds_sum", source="redis") == pytest.approx(0.015)
    assert value(m, "scoring_inference_seconds_count", model="demo", version="1") == 1
    assert value(m, "scoring_inference_seconds_sum", model="demo", version="1") == 0.002
    assert value(m, "scoring_batch_size_requests_count") == 1
    assert value(m, "scoring_batch_size_requests_sum") == 6
    assert value(m, "scoring_batch_size_requests_bucket", le="4.0") == 0
    assert value(m, "scoring_batch_size_requests_bucket", le="8.0") == 1
    assert value(m, "scoring_batches_total", stored="true") == 1
    assert value(m, "scoring_batch_seconds_count") == 1


def test_a_batch_the_database_refused_counts_its_requests_as_retried() -> None:
    m = WorkerMetrics("cpu0@h")
    chunk = WorkItem({}, "bulk", size=40, outcome=Outcome.RETRY)
    single = WorkItem({}, "redis", outcome=Outcome.RETRY)
    dead = WorkItem(b"", "redis", outcome=Outcome.DEAD, reason="model 'x' has no active version")
    report = BatchReport(rows=[row("ok", "bulk")] * 40 + [row("ok")], dead=[dead], stored=False)
    m.after_batch([chunk, single, dead], 1.5, report)
    assert requests(m, "ok", "bulk") == 0 and requests(m, "ok") == 0  # nothing was stored
    assert requests(m, "retry", "bulk", model="unknown") == 40
    assert requests(m, "retry", "redis", model="unknown") == 1
    assert requests(m, "dead", "redis", model="unknown") == 1
    assert value(m, "scoring_dead_letters_total", source="redis", reason="unknown_model") == 1
    assert value(m, "scoring_batches_total", stored="false") == 1
    assert value(m, "scoring_batch_size_requests_sum") == 42


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("a tombstone (the record's value is null): nothing to score", "tombstone"),
        ("not UTF-8: 'utf-8' codec can't decode", "not_json"),
        ("expected a JSON object, got list", "not_json"),
        ("model 'nope' has no active version", "unknown_model"),
        ("model 'demo' has no version 9", "unknown_model"),
        ("unreadable chunk", "bad_chunk"),
        ("gave up after 5 attempts: database down", "retries_exhausted"),
        ("request_id: Field required", "bad_envelope"),
        (None, "other"),
    ],
)
def test_dead_letter_reasons_fall_into_a_few_classes(reason: str | None, kind: str) -> None:
    assert reason_class(reason) == kind


def test_every_loaded_version_reports_load_and_warm_up_times_and_where_it_runs(
    demo_pipeline: Any,
) -> None:
    """Through the real pipeline and scorer thread: the counts are the batch's own."""
    _, pipeline, _, _ = demo_pipeline
    m = WorkerMetrics("cpu0@h")
    pipeline.models.listener = m
    good = demo_requests(300)
    bad = demo_requests(2, prefix="bad")
    for r in bad:
        r["inputs"] = {}
    now = utcnow()
    batch = [WorkItem(p, "redis", now) for p in good + bad] + [WorkItem(b"{", "redis", now)]
    service = ScoringService(pipeline, max_batch_size=1000, max_wait_s=0.5, hooks=[m])
    ticket = service.submit(batch)
    service.start()
    try:
        assert ticket.wait(120)
    finally:
        service.close()
    assert requests(m, "ok") == 300 and requests(m, "invalid") == 2
    assert requests(m, "dead", model="unknown") == 1
    assert value(m, "scoring_batch_size_requests_count") == 1
    assert value(m, "scoring_batch_size_requests_sum") == 303
    assert value(m, "scoring_queue_wait_seconds_count", source="redis") == 300
    # demo's max_batch_size is 256: two model calls
    assert value(m, "scoring_inference_seconds_count", model="demo", version="1") == 2
    labels = {"model": "demo", "version": "1", "backend": "eager"}
    assert value(m, "scoring_model_load_seconds", **labels) > 0
    assert value(m, "scoring_model_warmup_seconds", **labels) > 0
    info = {"model": "demo", "version": "1", "backend": "eager", "device": "cpu"}
    assert value(m, "scoring_model_info", **info, worker="cpu0@h") == 1


def test_a_version_that_fails_to_load_is_counted(demo_pipeline: Any, tmp_path: Any) -> None:
    _, pipeline, _, record = demo_pipeline
    m = WorkerMetrics("cpu0@h")
    pipeline.models.listener = m
    broken = record.model_copy(update={"artifact_sha256": "0" * 64})
    with pytest.raises(Exception):  # noqa: B017 - whatever the artifact check raises
        pipeline.models.get(broken)
    failures = "scoring_model_load_failures_total"
    assert value(m, failures, model="demo", version="1", backend="eager") == 1


def test_metrics_are_served_and_a_taken_port_is_refused() -> None:
    m = WorkerMetrics("cpu0@h")
    port = free_port()
    m.serve(port, "127.0.0.1")
    try:
        m.after_batch([WorkItem({}, "redis")], 0.01, BatchReport(rows=[row("ok")], stored=True))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = body.decode()
        assert (
            'scoring_requests_total{model="demo",source="redis",status="ok",version="1"} 1.0'
            in text
        )
        with pytest.raises(OSError):
            WorkerMetrics("cpu1@h").serve(port, "127.0.0.1")
    finally:
        m.stop()


def test_each_process_of_one_host_gets_its_own_port() -> None:
    plans = launcher.plan_workers(cpu=3, gpus=None, cores=6)
    assert [p["SCORING_METRICS_PORT"] for p in launcher.with_metrics_ports(plans, 9464)] == [
        "9464",
        "9465",
        "9466",
    ]
    assert launcher.with_metrics_ports(plans, None) == plans
    with pytest.raises(launcher.LaunchError, match="at most 65533"):
        launcher.with_metrics_ports(plans, 65535)


def test_queue_lengths_are_read_on_scrape_and_a_broker_away_is_no_error() -> None:
    broker = BrokerSettings(url=SecretStr("redis://127.0.0.1:1/0"))  # nothing listens there
    m = WorkerMetrics("cpu0@h", broker)
    assert "scoring_redis_queue_length" in m.metric_names()
    families = {f.name: f for f in m.registry.collect()}
    assert families["scoring_redis_queue_length"].samples == []


def test_the_names_it_can_export() -> None:
    names = WorkerMetrics("cpu0@h", BrokerSettings()).metric_names()
    assert {
        "scoring_requests_total",
        "scoring_dead_letters_total",
        "scoring_batch_size_requests_bucket",
        "scoring_queue_wait_seconds_count",
        "scoring_inference_seconds_sum",
        "scoring_batches_in_flight",
        "scoring_model_info",
        "scoring_model_warmup_seconds",
    } <= names
    m = WorkerMetrics("cpu0@h")
    m.add_kafka_lag(lambda: [("score-requests", 0, 7)])
    assert value(m, "scoring_kafka_consumer_lag", topic="score-requests", partition="0") == 7
