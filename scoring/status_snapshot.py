"""What `scoring status` shows, as one JSON-able dict: queues, Kafka lag, workers, model
versions, the last minutes' traffic by source, and recent bulk runs.

Every part is read from the systems themselves (Redis, Kafka, Celery's control channel,
the database), each with a short timeout; a part that cannot be read says why instead of
failing the whole screen. Nothing here prints a URL or a credential: queues, topics and
worker names only.
"""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from schemas import names
from schemas.db import session_scope
from schemas.redaction import redact
from schemas.settings import Settings
from schemas.tables import BulkRun, ScoreResult, table_of, utcnow

LATENCY_SAMPLE = 100_000


def snapshot(
    settings: Settings, engine: Engine, minutes: float = 15.0, kafka: bool | None = None
) -> dict[str, Any]:
    """The database parts raise (without it there is no screen to show: the command says
    which setting and why), and so does Kafka when it is asked for (`kafka=True`); the
    other parts say why they are missing."""
    models = model_versions(engine)
    if kafka:
        from schemas.kafka_access import check_kafka

        check_kafka(settings.kafka, timeout_s=5.0)
    return {
        "at": utcnow().isoformat(timespec="seconds"),
        "window_minutes": minutes,
        "queues": _guard(lambda: redis_queues(settings)),
        "kafka": _guard(lambda: kafka_state(settings, kafka)),
        "workers": _guard(lambda: celery_workers(settings)),
        "models": models,
        "traffic": traffic(engine, minutes),
        "quality": quality(engine, minutes),
        "bulk_runs": bulk_runs(engine),
    }


def _guard(part: Any) -> Any:
    try:
        return part()
    except Exception as exc:  # noqa: BLE001 - one unreadable part never hides the rest
        first = (str(exc).splitlines() or [""])[0]
        return {"error": redact(f"{type(exc).__name__}: {first}")[:300]}


def redis_queues(settings: Settings) -> dict[str, Any] | None:
    """Messages waiting (every priority list), held by workers (unacked) and dead-lettered."""
    broker = settings.broker
    if not broker.broker_url().startswith(("redis://", "rediss://")):
        return None
    client = broker.redis_client(socket_timeout=3, socket_connect_timeout=3)

    def depth(queue: str) -> int:
        return int(sum(client.llen(k) for k in names.queue_lists(queue)))

    held = 0  # kombu's `unacked` hash serves every queue: count this one's entries
    for _, entry in client.hscan_iter("unacked", count=500):
        try:
            held += json.loads(entry)[-1] == broker.requests_queue
        except (ValueError, TypeError, IndexError):
            continue
    return {
        "requests": {"queue": broker.requests_queue, "waiting": depth(broker.requests_queue)},
        "unacked": held,
        "dead_letters": {
            "queue": broker.dead_letter_queue,
            "waiting": depth(broker.dead_letter_queue),
        },
    }


def kafka_state(settings: Settings, wanted: bool | None) -> dict[str, Any] | None:
    """Lag per partition of the requests topic (read without joining the group), the
    dead-letter topic's size, and the group's members."""
    kafka = settings.kafka
    if wanted is False or (wanted is None and not _answers(kafka.bootstrap)):
        return None
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from workers.sources.kafka.lag import consumer_lag

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    lags = consumer_lag(kafka, timeout_s=5.0)
    consumer = KafkaConsumer(**kafka.client_config(), request_timeout_ms=6000)
    try:
        parts = consumer.partitions_for_topic(kafka.dlq_topic) or set()
        tps = [TopicPartition(kafka.dlq_topic, p) for p in parts]
        ends = consumer.end_offsets(tps) if tps else {}
        begins = consumer.beginning_offsets(tps) if tps else {}
    finally:
        consumer.close()
    admin = KafkaAdminClient(**kafka.client_config(), request_timeout_ms=6000)
    try:
        group = admin.describe_groups([kafka.group]).get(kafka.group) or {}
    finally:
        admin.close()
    members = [
        {"client_id": m.get("client_id"), "host": m.get("client_host")}
        for m in group.get("members") or []
    ]
    return {
        "topic": kafka.topic,
        "group": kafka.group,
        "partitions": [
            {"partition": p.partition, "end": p.end, "committed": p.committed, "lag": p.lag}
            for p in lags
        ],
        "lag": sum(p.lag for p in lags),
        "dead_letter_topic": {
            "topic": kafka.dlq_topic,
            "records": int(sum(ends[tp] - begins.get(tp, 0) for tp in ends)),
        },
        "group_state": group.get("group_state") or group.get("state"),
        "members": members,
    }


def celery_workers(settings: Settings) -> list[dict[str, Any]]:
    """The Celery workers that answer a ping within a second, and the queues they consume."""
    from schemas.broker import celery_app

    app = celery_app(settings.broker)
    inspect = app.control.inspect(timeout=1.0)
    pings = inspect.ping() or {}
    queues = (inspect.active_queues() or {}) if pings else {}
    return [
        {"worker": name, "queues": sorted(q.get("name", "") for q in queues.get(name, []))}
        for name in sorted(pings)
    ]


def model_versions(engine: Engine) -> list[dict[str, Any]]:
    """Active and staged versions with their backends."""
    from workers.runtime import registry

    return [
        {
            "name": v.name,
            "version": v.version,
            "status": v.status,
            "backend": v.backend,
            "activated_at": v.activated_at.isoformat(timespec="seconds")
            if v.activated_at
            else None,
        }
        for v in registry.list_versions(engine)
        if v.status in ("active", "staged")
    ]


def quality(engine: Engine, minutes: float) -> list[dict[str, Any]]:
    """Per version: accuracy on the ground truth (feedback) of results scored in the
    window, and the verdict of its latest `scoring drift` report (of the last day)."""
    from datetime import timedelta

    from schemas.monitoring import accuracy_by_version, latest_drift

    now = utcnow()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for row in accuracy_by_version(engine, now - timedelta(minutes=minutes)):
        out[(row["model"], row["version"])] = {**row, "drift": None}
    for report in latest_drift(engine, now - timedelta(days=1)):
        key = (report["model"], report["version"])
        entry = out.setdefault(
            key,
            {"model": key[0], "version": key[1], "labelled": 0, "correct": 0, "accuracy": None},
        )
        features = (report["stats"] or {}).get("features") or {}
        top = max(features.items(), key=lambda kv: kv[1]["psi"], default=None)
        entry["drift"] = {
            "drifted": report["drifted"],
            "at": report["created_at"].isoformat(timespec="seconds"),
            "drifted_features": sorted(k for k, v in features.items() if v["drifted"]),
            "top_feature": {"name": top[0], "psi": top[1]["psi"]} if top else None,
        }
    return [out[k] for k in sorted(out)]


def traffic(engine: Engine, minutes: float) -> dict[str, Any]:
    """Per source over the window: rows/s, end-to-end latency p50/p99 (enqueued → stored,
    from a sample of the newest rows), and the share of error, invalid and expired rows."""
    table = table_of(ScoreResult)
    since = utcnow() - timedelta(minutes=minutes)
    seconds = minutes * 60
    with session_scope(engine) as session:
        counts = session.execute(
            select(table.c.source, table.c.status, func.count())
            .where(table.c.scored_at >= since)
            .group_by(table.c.source, table.c.status)
        ).all()
        timed = session.execute(
            select(table.c.source, table.c.enqueued_at, table.c.scored_at)
            .where(table.c.scored_at >= since, table.c.enqueued_at.is_not(None))
            .order_by(table.c.scored_at.desc())
            .limit(LATENCY_SAMPLE)
        ).all()
    by_source: dict[str, dict[str, int]] = {}
    for source, status, n in counts:
        by_source.setdefault(source, {})[status] = int(n)
    latencies: dict[str, list[float]] = {}
    for source, enqueued, scored in timed:
        latencies.setdefault(source, []).append((scored - enqueued).total_seconds() * 1000)
    out: dict[str, Any] = {}
    for source, statuses in sorted(by_source.items()):
        total = sum(statuses.values())
        lat = np.array(latencies.get(source, []))
        out[source] = {
            "rows": total,
            "rows_per_s": round(total / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            **{
                f"{status}_rate": round(statuses.get(status, 0) / total, 4)
                for status in ("error", "invalid", "expired")
            },
            "statuses": statuses,
        }
    return out


def bulk_runs(engine: Engine, limit: int = 10) -> list[dict[str, Any]]:
    from sqlmodel import col

    with session_scope(engine) as session:
        runs = session.scalars(
            select(BulkRun).order_by(col(BulkRun.started_at).desc()).limit(limit)
        ).all()
        return [
            {
                "run": r.id,
                "model": f"{r.model_name} v{r.model_version}",
                "status": r.status,
                "rows": r.enqueued_rows,
                "rejected": r.rejected_rows,
                "chunks": r.chunks,
                "started": r.started_at.isoformat(timespec="seconds"),
            }
            for r in runs
        ]


def _answers(bootstrap: str, timeout_s: float = 0.3) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout_s).close()
    except (OSError, ValueError):
        return False
    return True
