"""`scoring status`: one screen with the state of things (see scoring/status_snapshot.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Group
from rich.table import Table

from scoring.cli.common import console, engine, settings


def status(
    kafka: bool = typer.Option(
        None, "--kafka/--no-kafka", help="Kafka lag and members (default: if the broker answers)."
    ),
    minutes: float = typer.Option(15.0, "--minutes", help="Traffic over the last N minutes."),
    as_json: bool = typer.Option(False, "--json", help="Print the snapshot as JSON."),
    watch: float = typer.Option(
        None, "--watch", help="Refresh every N seconds until interrupted.", show_default=False
    ),
) -> None:
    """Queues, Kafka lag, workers, model versions, recent traffic and bulk runs."""
    from scoring.status_snapshot import snapshot

    s, db = settings(), engine()
    if as_json:
        console.print_json(json.dumps(snapshot(s, db, minutes, kafka), default=str))
        return
    if not watch:
        console.print(render(snapshot(s, db, minutes, kafka)))
        return
    from rich.live import Live

    with Live(render(snapshot(s, db, minutes, kafka)), console=console, screen=False) as live:
        try:
            while True:
                time.sleep(watch)
                live.update(render(snapshot(s, db, minutes, kafka)))
        except KeyboardInterrupt:
            pass


def render(snap: dict[str, Any]) -> Group:
    parts: list[Any] = [f"[bold]scoring status[/] at {snap['at']} UTC"]
    parts += [_queues(snap["queues"]), _kafka(snap["kafka"]), _workers(snap["workers"])]
    parts += [_models(snap["models"]), _traffic(snap["traffic"], snap["window_minutes"])]
    parts.append(_quality(snap.get("quality") or [], snap["window_minutes"]))
    parts.append(_runs(snap["bulk_runs"]))
    return Group(*[p for p in parts if p is not None])


def _failed(title: str, part: Any) -> str | None:
    if isinstance(part, dict) and "error" in part:
        return f"[red]{title}: cannot read ({part['error']})[/]"
    return None


def _queues(q: Any) -> Any:
    if q is None:
        return None
    if failed := _failed("redis queues", q):
        return failed
    table = Table("queue", "waiting", "held (unacked)", title="redis")
    table.add_row(q["requests"]["queue"], str(q["requests"]["waiting"]), str(q["unacked"]))
    table.add_row(q["dead_letters"]["queue"] + " (dead letters)", str(q["dead_letters"]["waiting"]))
    return table


def _kafka(k: Any) -> Any:
    if k is None:
        return None
    if failed := _failed("kafka", k):
        return failed
    table = Table("partition", "end offset", "committed", "lag")
    table.title = (
        f"kafka {k['topic']}, group {k['group']} ({k['group_state'] or '?'}, "
        f"{len(k['members'])} members); dead letters: {k['dead_letter_topic']['records']}"
    )
    for p in k["partitions"]:
        committed = "-" if p["committed"] is None else str(p["committed"])
        table.add_row(str(p["partition"]), str(p["end"]), committed, str(p["lag"]))
    table.add_row("total", "", "", str(k["lag"]))
    return table


def _workers(w: Any) -> Any:
    if failed := _failed("celery workers", w):
        return failed
    table = Table("worker", "queues", title="celery workers (answering a ping)")
    for worker in w:
        table.add_row(worker["worker"], ", ".join(worker["queues"]))
    if not w:
        table.add_row("none answered", "")
    return table


def _models(m: Any) -> Any:
    if failed := _failed("models", m):
        return failed
    table = Table("model", "version", "status", "backend", "active since", title="versions")
    for v in m:
        table.add_row(
            v["name"], str(v["version"]), v["status"], v["backend"], v["activated_at"] or ""
        )
    return table


def _quality(q: list[dict[str, Any]], minutes: float) -> Any:
    if not q:
        return f"quality: no ground truth in the last {minutes:g} minutes and no drift report"
    table = Table(
        "model", "version", "accuracy", "labelled", "drift (latest report)", "top PSI",
        title=f"quality: accuracy on feedback (last {minutes:g} minutes), drift",
    )  # fmt: skip
    for v in q:
        drift, acc = v["drift"], v["accuracy"]
        verdict = "-" if drift is None else ("[red]DRIFT[/]" if drift["drifted"] else "none")
        if drift and drift["drifted_features"]:
            verdict += f" ({', '.join(drift['drifted_features'][:3])})"
        top = drift and drift["top_feature"]
        table.add_row(
            v["model"], str(v["version"]), "-" if acc is None else f"{acc:.2%}",
            str(v["labelled"]), verdict, f"{top['name']} {top['psi']:.3f}" if top else "-",
        )  # fmt: skip
    return table


def _traffic(t: Any, minutes: float) -> Any:
    if failed := _failed("traffic", t):
        return failed
    table = Table(
        "source", "rows", "rows/s", "p50 ms", "p99 ms", "error", "invalid", "expired",
        title=f"last {minutes:g} minutes",
    )  # fmt: skip
    for source, r in t.items():
        table.add_row(
            source, str(r["rows"]), f"{r['rows_per_s']:.1f}",
            "-" if r["p50_ms"] is None else f"{r['p50_ms']:.0f}",
            "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f}",
            f"{r['error_rate']:.2%}", f"{r['invalid_rate']:.2%}", f"{r['expired_rate']:.2%}",
        )  # fmt: skip
    if not t:
        table.add_row("no results in the window", "", "", "", "", "", "", "")
    return table


def _runs(runs: Any) -> Any:
    if failed := _failed("bulk runs", runs):
        return failed
    table = Table("run", "model", "status", "rows", "rejected", "started", title="bulk runs")
    for r in runs:
        table.add_row(
            r["run"], r["model"], r["status"], str(r["rows"]), str(r["rejected"]), r["started"]
        )
    return table
