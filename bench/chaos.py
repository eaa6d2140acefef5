"""`scoring bench chaos`: SIGKILL Redis-path workers at random instants during a bulk run,
restart them each time, and count: rows in, results out, lost, doubled, dead letters.

Each worker is a real process (`python -m workers.process`, what `scoring worker` starts);
the one killed is its main process, which holds the broker connection and the messages
it fetched, buffered (celery-batches) or is scoring. A kill lands at a uniformly random
instant after the target is warm; the run keeps going on the other worker(s) while the
killed one restarts. When the rows are all scored before the kills have landed (a fast
machine), another run of a quarter as many rows is sent, and the kills go on. At
the end every row must have exactly one result and nothing may be left queued or
unacknowledged. The test suite runs 25 kills; the long run is 200.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from bench.fleet import Procs, busy, drop_queues, llen, settle, wait


@dataclass(frozen=True)
class ChaosPlan:
    kills: int = 200
    rows: int = 400_000
    chunk_size: int = 16
    workers: int = 2
    visibility_s: int = 5
    max_delay_s: float = 2.0  # a kill lands 0 .. max_delay_s after its target is warm
    drain_timeout_s: float = 300.0
    seed: int = 0

    @property
    def more_rows(self) -> int:
        """Rows of each further run, when the rows run out before the kills."""
        return max(self.rows // 4, 1)


def run_chaos(
    plan: ChaosPlan,
    server_db_url: str,
    broker_url: str,
    workdir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One chaos run on a scratch database and queues of its own; the report."""
    from schemas.db import make_engine, scratch_database

    tag = uuid.uuid4().hex[:8]
    queue, dlq = f"bench-chaos-{tag}", f"bench-chaos-{tag}.dlq"
    with scratch_database(server_db_url, "bench_chaos") as url:
        engine = make_engine(url)
        try:
            return _run(plan, url, broker_url, queue, dlq, workdir, engine, log)
        finally:
            engine.dispose()
            drop_queues(broker_url, queue, dlq)


def _run(
    plan: ChaosPlan,
    url: str,
    broker_url: str,
    queue: str,
    dlq: str,
    workdir: Path,
    engine: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from workers.runtime import registry
    from workers.runtime.models.demo.build import build_artifact, write_csv

    registry.register(engine, workdir / "store", "demo", build_artifact(workdir / "artifact"))
    data = write_csv(workdir / "rows.csv", plan.rows, seed=plan.seed)
    more = write_csv(workdir / "more.csv", plan.more_rows, seed=plan.seed + 1)
    beats = workdir / "beats"
    beats.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCORING_")},
        "SCORING_DATABASE_URL": url,
        "SCORING_BROKER_URL": broker_url,
        "SCORING_MODEL_STORE": str(workdir / "store"),
        "SCORING_REQUESTS_QUEUE": queue,
        "SCORING_DEAD_LETTER_QUEUE": dlq,
        "SCORING_VISIBILITY_TIMEOUT_S": str(plan.visibility_s),
        "SCORING_TORCH_THREADS": "1",
        "SCORING_HEARTBEAT_DIR": str(beats),
        "SCORING_DB_RETRY_BACKOFF_S": "0.05",
        "CUDA_VISIBLE_DEVICES": "",
    }
    procs = Procs(env, workdir, beats)
    names = [f"chaos{i}" for i in range(plan.workers)]
    rng = random.Random(plan.seed)  # nosec B311: seeded, for reproducible kill times
    kills: list[dict[str, float]] = []
    try:
        for name in names:
            procs.start(name)
        wait(lambda: all(procs.heartbeat(n) for n in names), 180, "workers warm")
        bulks = [_bulk(data, plan, env)]
        target = plan.rows  # results once every run so far is scored
        started = time.monotonic()
        pending: dict[str, dict[str, float]] = {}
        while len(kills) < plan.kills:
            name = names[len(kills) % len(names)]
            settle(procs, pending)
            # Every worker is consuming (each stored a batch since it started): a kill then
            # lands on messages its target fetched, buffered or is scoring, and the run
            # never has all its workers down at once.
            wait(
                lambda t=target: all(_consuming(procs, n, engine, t) for n in names),
                180,
                "workers consuming",
            )
            time.sleep(rng.uniform(0, plan.max_delay_s))
            if _count(engine) >= target:
                # The rows ran out before the kills (a fast machine): another run of a
                # quarter as many rows, and the next kill once it is being scored.
                log(f"the rows ran out after {len(kills)} kills: another run")
                _finished(bulks[-1])
                bulks.append(_bulk(more, plan, env))
                wait(lambda t=target: _count(engine) > t, 180, "the next run scoring")
                target += plan.more_rows
                continue
            procs.procs[name].send_signal(signal.SIGKILL)
            procs.procs[name].wait(30)
            kill = {
                "at": round(time.monotonic() - started, 2),
                "wall": time.time(),
                "stored_at_kill": float(_count(engine)),
            }
            kills.append(kill)
            procs.start(name)
            pending[name] = kill
            if len(kills) % 10 == 0:
                log(
                    f"{len(kills)} kills at {kill['at']:.0f}s: {int(kill['stored_at_kill'])} stored"
                )
        last_kill = time.monotonic()
        _finished(bulks[-1])
        wait(lambda: _count(engine) >= target, plan.drain_timeout_s, "every row stored")
        drain_s = time.monotonic() - last_kill
        wait(lambda: not busy(broker_url, queue), 60, "queues empty")
        settle(procs, pending, wait_s=60)
        elapsed = time.monotonic() - started
    finally:
        procs.stop_all()
    return _report(plan, engine, broker_url, queue, dlq, kills, drain_s, elapsed, len(bulks))


def _bulk(data: Path, plan: ChaosPlan, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`scoring bulk` of a whole file, as a new run."""
    return subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "bulk", str(data), "--model", "demo"]
        + ["--chunk-size", str(plan.chunk_size)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finished(bulk: subprocess.Popen[bytes]) -> None:
    out, _ = bulk.communicate(timeout=600)
    if bulk.returncode != 0:
        raise RuntimeError(f"scoring bulk failed: {out.decode(errors='replace')[-2000:]}")


def _consuming(procs: Procs, name: str, engine: Any, target: int) -> bool:
    beat = procs.heartbeat(name)
    return bool(beat and beat.get("batches", 0) > 0) or _count(engine) >= target


def _report(
    plan: ChaosPlan,
    engine: Any,
    broker_url: str,
    queue: str,
    dlq: str,
    kills: list[dict[str, float]],
    drain_s: float,
    elapsed: float,
    runs: int,
) -> dict[str, Any]:
    from sqlalchemy import text

    from bench.machine import cpu_info

    with engine.connect() as conn:
        rows, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT request_id) FROM score_results")
        ).one()
        enqueued = conn.execute(text("SELECT sum(enqueued_rows) FROM bulk_runs")).scalar_one()
    recovered = [k["recovered_s"] for k in kills if "recovered_s" in k]
    return {
        "benchmark": "chaos",
        "machine": cpu_info(),
        "plan": asdict(plan),
        "kills": len(kills),
        "runs": runs,  # bulk runs of the file: another starts when the rows run out first
        "rows_in": int(enqueued or 0),
        "results_out": int(rows),
        "lost": int(enqueued or 0) - int(distinct),
        "duplicated": int(rows) - int(distinct),
        "dead_letters": llen(broker_url, dlq),
        "left_queued_or_unacked": busy(broker_url, queue),
        "recovery_s": {
            "median": round(statistics.median(recovered), 2) if recovered else None,
            "max": max(recovered, default=None),
            "what": "SIGKILL to the restarted worker's first stored batch (import, warm-up)",
        },
        "drain_after_last_kill_s": round(drain_s, 1),
        "wall_s": round(elapsed, 1),
    }


def _count(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM score_results")).scalar_one())


def command(
    kills: int = typer.Option(200, "--kills", help="SIGKILLs to land during the run."),
    rows: int = typer.Option(400_000, "--rows", help="Rows in the bulk run."),
    chunk_size: int = typer.Option(16, "--chunk-size", help="Rows per task message."),
    workers: int = typer.Option(2, "--workers", help="Worker processes."),
    drain_timeout: float = typer.Option(
        1800.0, "--drain-timeout", help="Seconds the rows left after the last kill may take."
    ),
    out: Path = typer.Option(Path("bench/results/chaos.json"), "--out", help="JSON report."),
) -> None:
    """SIGKILL workers at random instants during a bulk run; count lost and doubled rows."""
    from schemas.settings import Settings

    settings = Settings.from_env()
    server = settings.database.sqlalchemy_url()
    if not server.startswith("postgresql"):
        typer.echo('error: needs PostgreSQL and Redis: eval "$(make -s services-env)"', err=True)
        raise typer.Exit(2)
    plan = ChaosPlan(
        kills=kills,
        rows=rows,
        chunk_size=chunk_size,
        workers=workers,
        drain_timeout_s=drain_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="scoring-chaos-") as tmp:
        report = run_chaos(plan, server, settings.broker.broker_url(), Path(tmp), typer.echo)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps({k: report[k] for k in report if k not in ("machine", "plan")}, indent=2))
    if report["lost"] or report["duplicated"] or report["left_queued_or_unacked"]:
        raise typer.Exit(1)
