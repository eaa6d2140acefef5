"""`scoring bench soak`'s report: per source the counts (events in, results out, lost,
doubled) and latency from the database, each kill's recovery, the Redis restart's, and
the table printed at the end."""

from __future__ import annotations

from typing import Any

SOURCES = ("redis", "kafka")


def counts(engine: Any, prefix: str, acked: int) -> dict[str, Any]:
    """Events in (confirmed), results out, lost, doubled; latency is the request's
    creation (Redis: the producer's enqueued_at; Kafka: the record's CreateTime) to its
    result's scored_at."""
    from sqlalchemy import text

    sql = text(
        "SELECT count(*) FILTER (WHERE n < :n), count(DISTINCT request_id) FILTER (WHERE n < :n),"
        " count(*) FILTER (WHERE n >= :n), count(*) FILTER (WHERE status <> 'ok'),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP"
        " (ORDER BY ms), max(ms) FROM (SELECT request_id, status,"
        " split_part(request_id, '-', 3)::int AS n,"
        " extract(epoch FROM scored_at - enqueued_at) * 1000 AS ms"
        " FROM score_results WHERE request_id LIKE :p) AS r"
    )
    with engine.connect() as conn:
        rows, distinct, unsent, not_ok, p50, p99, worst = conn.execute(
            sql, {"p": f"{prefix}-%", "n": acked}
        ).one()
    return {
        "events_in": acked,
        "results_out": int(rows),
        "lost": acked - int(distinct),
        "duplicated": int(rows) - int(distinct),
        "results_never_confirmed": int(unsent),
        "not_ok": int(not_ok),
        "latency_ms": {
            "p50": _ms(p50),
            "p99": _ms(p99),
            "max": _ms(worst),
        },
    }


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def kills(kills: list[dict[str, Any]]) -> dict[str, Any]:
    """Each kill's recovery: SIGKILL to the restarted worker's first stored batch."""
    done = [float(k["recovered_s"]) for k in kills if "recovered_s" in k]
    by_source = {
        s: [float(k["recovered_s"]) for k in kills if k["source"] == s and "recovered_s" in k]
        for s in SOURCES
    }
    return {
        "landed": len(kills),
        "recovered": len(done),
        "recovery_s": {
            "mean": round(sum(done) / len(done), 2) if done else None,
            "max": max(done, default=None),
            "mean_by_source": {
                s: round(sum(v) / len(v), 2) if v else None for s, v in by_source.items()
            },
            "what": "SIGKILL to the restarted worker's first stored batch (import, warm-up)",
        },
        "each": [{k: v for k, v in kill.items() if k != "wall"} for kill in kills],
    }


def restart(engine: Any, restart: dict[str, Any]) -> dict[str, Any]:
    """The Redis restart's recovery: Redis back to the first result of a request produced
    after it (the whole path, producer to stored result, working again)."""
    if not restart:
        return {"happened": False}
    from sqlalchemy import text

    with engine.connect() as conn:
        first, after = conn.execute(
            text(
                "SELECT min(scored_at), count(*) FROM score_results WHERE request_id LIKE "
                "'soak-redis-%' AND enqueued_at >= to_timestamp(:t)"
            ),
            {"t": restart["wall"]},
        ).one()
    recovered = None if first is None else round(first.timestamp() - restart["wall"], 2)
    return {
        "happened": True,
        "at_s": restart["at_s"],
        "down_s": restart["down_s"],
        "first_result_after_s": recovered,
        "results_after": int(after),
    }


def topic_records(kafka: Any, topic: str) -> int:
    """Records in `topic` (its end offsets: nothing is ever deleted from it here)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**kafka.client_config(), group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close(autocommit=False)


def with_machine(report: dict[str, Any]) -> dict[str, Any]:
    from bench.machine import cpu_info

    return {"benchmark": report.pop("benchmark"), "machine": cpu_info(), **report}


def failed(report: dict[str, Any]) -> bool:
    """Anything lost or doubled, on either source."""
    return any(s["lost"] or s["duplicated"] for s in report["sources"].values())


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    src = report["sources"]
    table = Table(
        title=f"soak: {report['plan']['duration_s']:g}s, {report['kills']['landed']} kills"
    )
    table.add_column("")
    for s in SOURCES:
        table.add_column(s, justify="right")
    for key in ("events_in", "results_out", "lost", "duplicated", "dead_letters", "not_ok"):
        table.add_row(key.replace("_", " "), *(f"{src[s][key]:,}" for s in SOURCES))
    for q in ("p50", "p99"):
        table.add_row(f"{q} latency ms", *(str(src[s]["latency_ms"][q]) for s in SOURCES))
    rec = report["kills"]["recovery_s"]
    table.add_row("kill recovery s (mean)", *(str(rec["mean_by_source"][s]) for s in SOURCES))
    Console().print(table)
    restart = report["redis_restart"]
    Console().print(
        f"kills {report['kills']['landed']} (recovered {report['kills']['recovered']}), "
        f"recovery mean {rec['mean']} s, max {rec['max']} s; Redis restart at "
        f"{restart.get('at_s')} s, down {restart.get('down_s')} s, first result "
        f"{restart.get('first_result_after_s')} s after; unexpected exits "
        f"{len(report['unexpected_exits'])}; wall {report['wall_s']} s"
    )
