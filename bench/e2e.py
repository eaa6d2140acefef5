"""`scoring bench e2e`: bulk scoring through the real product, side by side with the model
runtime alone (the ceiling) and with what users write by hand, and scaling by a worker.

Arms, on the same machine, model and data, one after another; each repetition stops at
--rows rows or --seconds seconds, whichever comes first, and the figure is the median.
Repetitions are interleaved (every arm once, then every arm again), so that a burst of
load from elsewhere on a shared machine lands on one repetition of each arm, not on all
repetitions of one arm:
  inprocess    the model runtime alone, micro-batches of the version's max batch size
  product      `scoring bulk` through real Redis into 2 `scoring worker` processes with 1
               torch thread each (what `scoring worker --cpu 2` runs here) into PostgreSQL
  product_1x1  the same file into 1 worker process with 1 torch thread
  per_request  the product fed one request per task message (RedisProducer, per_message=1)
  naive        one Celery task per row, one ORM insert and commit per row (bench/naive_app)
  sink         ResultSink.write alone into PostgreSQL, 256 rows per transaction
  orm_per_row  one ORM insert and commit per row
  enqueue      requests/s that one process publishes through RedisProducer.send
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.settings import Settings

if TYPE_CHECKING:  # these import torch: only when the benchmark runs
    from bench.e2e_arms import Budget, Rep
    from bench.e2e_models import BenchModel

ARMS = (
    "enqueue",
    "sink",
    "orm_per_row",
    "inprocess",
    "product",
    "product_1x1",
    "per_request",
    "naive",
)
TARGETS: dict[str, float] = {
    "pipeline_efficiency": 0.85,
    "pipeline_vs_bottleneck": 0.7,
    "vs_naive": 20,
    "two_workers_vs_one": 1.6,
    "sink_rows_per_s": 20_000,
    "sink_vs_orm_per_row": 20,
    "enqueue_per_s": 5_000,
}
# How each arm is set up, copied into the report so that the figures carry their terms.
SETUP = {
    "inprocess": "load_model + predict over micro-batches of the version's max batch size; "
    "best of 1 torch thread and one per core",
    "product": "bulk CSV via producers.bulk.enqueue_file (chunk_size rows per message, "
    "typed by Arrow and sent as Arrow columns) "
    "-> Redis -> 2 `scoring worker` processes (solo pool, celery-batches, 1 torch thread "
    "each) -> PostgreSQL; timed from the first row read to the last result stored",
    "product_1x1": "the same with 1 worker process of 1 torch thread",
    "per_request": "RedisProducer.send(per_message=1) into the same 2 workers",
    "naive": "bench/naive_app.py: Celery defaults (prefork, 1 child per core, prefetch x4, "
    "early ack), task.delay per row, one ORM insert + commit per row",
    "sink": "ResultSink.write, 256 rows + 1 metrics row per transaction",
    "orm_per_row": "Session.add + commit per row",
    "enqueue": "RedisProducer.send with validation, chunk_size requests per message",
}
console = Console()


@dataclass(frozen=True)
class Plan:
    """How long each arm runs and how often; the same for every arm."""

    rows: int
    reps: int
    seconds: float
    chunk: int
    stall_s: float = 60.0
    arms: frozenset[str] = frozenset(ARMS)
    quick: bool = False

    def wants(self, arm: str) -> bool:
        return arm in self.arms

    def budget(self, rows: int | None = None) -> Budget:
        from bench.e2e_arms import Budget

        return Budget(rows or self.rows, self.seconds, self.stall_s)

    def rows_for(self, faster_rate: float | None) -> int:
        """Rows for an arm no faster than `faster_rate`: at least --seconds of work, at most
        --rows (a queue arm is timed from first row in to last result out)."""
        if not faster_rate:
            return self.rows
        return max(1, min(self.rows, int(faster_rate * self.seconds) + 1))


def summarise(runs: list[Rep]) -> dict[str, Any]:
    """Median rows/s of an arm's repetitions, with every repetition kept."""
    return {
        "rows_per_s": round(statistics.median(r.rows_per_s for r in runs), 1),
        "lost": sum(r.lost for r in runs),
        "reps": [r.as_dict() for r in runs],
    }


def ratios(arms: dict[str, Any]) -> dict[str, float | None]:
    """The claims, as ratios of medians; None where an arm was not run."""
    demo, text = arms.get("demo", {}), arms.get("minilm", {})

    def rate(group: dict[str, Any], arm: str) -> float | None:
        return group.get(arm, {}).get("rows_per_s")

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    sink, demo_in = rate(arms, "sink"), rate(demo, "inprocess")
    bottleneck = min(demo_in, sink) if demo_in and sink else None
    two_demo = div(rate(demo, "product"), rate(demo, "product_1x1"))
    two_text = div(rate(text, "product"), rate(text, "product_1x1"))
    return {
        "pipeline_efficiency": div(rate(text, "product"), rate(text, "inprocess")),
        "pipeline_vs_bottleneck": div(rate(demo, "product"), bottleneck),
        "vs_naive": div(rate(demo, "product"), rate(demo, "naive")),
        "vs_per_request": div(rate(demo, "product"), rate(demo, "per_request")),
        "vs_celery_batches": None,
        "two_workers_vs_one": two_text if two_text is not None else two_demo,
        "two_workers_vs_one_demo": two_demo,
        "two_workers_vs_one_minilm": two_text,
        "sink_rows_per_s": sink,
        "sink_vs_orm_per_row": div(sink, rate(arms, "orm_per_row")),
        "enqueue_per_s": rate(arms, "enqueue"),
    }


def _lost(arms: dict[str, Any]) -> int:
    """Rows in without a result out, or the reverse (a row written twice): must be 0."""
    total = 0
    for value in arms.values():
        if isinstance(value, dict) and "lost" in value:
            total += sum(abs(int(r["lost"])) for r in value["reps"])
        elif isinstance(value, dict):
            total += _lost(value)
    return total


def command(
    rows: int = typer.Option(20_000, "--rows", help="Row budget of each arm repetition."),
    out: Path = typer.Option(Path("bench/results/e2e.json"), "--out", help="JSON report."),
    model: str = typer.Option("both", "--model", help="demo, minilm or both."),
    quick: bool = typer.Option(False, "--quick", help="1 repetition, 10 s budget: development."),
    reps: int = typer.Option(None, "--reps", help="Repetitions per arm (default 3, quick 1)."),
    seconds: float = typer.Option(None, "--seconds", help="Time budget per arm (default 30)."),
    only: str = typer.Option(
        ",".join(ARMS), "--arms", help="Comma-separated arms to run (development)."
    ),
) -> None:
    """End to end: bulk through Redis, workers and PostgreSQL vs the runtime and baselines."""
    from bench.e2e_run import run

    if model not in ("demo", "minilm", "both"):
        console.print(f"[red]error:[/] --model must be demo, minilm or both, not {model!r}")
        raise typer.Exit(2)
    settings = Settings.from_env()
    if not settings.database.sqlalchemy_url().startswith("postgresql"):
        console.print(
            "[red]error:[/] the e2e bench needs PostgreSQL and Redis: "
            'eval "$(make -s services-env)" (or set SCORING_DATABASE_URL/BROKER_URL)'
        )
        raise typer.Exit(2)
    chosen = frozenset(a.strip() for a in only.split(",") if a.strip())
    if not chosen or not chosen <= set(ARMS):
        console.print(f"[red]error:[/] --arms takes a subset of {', '.join(ARMS)}")
        raise typer.Exit(2)
    models, notes = _models(model)
    plan = Plan(
        rows=rows,
        reps=reps or (1 if quick else 3),
        seconds=seconds or (10.0 if quick else 30.0),
        chunk=settings.batching.chunk_size,
        stall_s=30.0 if quick else 60.0,
        arms=chosen,
        quick=quick,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scoring-e2e-") as tmp:
        arms, context = run(plan, settings, models, Path(tmp), uuid.uuid4().hex[:8])
    report = _report(plan, settings, arms, context, notes)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    console.print(f"wrote {out} ({report['wall_seconds']:.0f} s)")


def _models(choice: str) -> tuple[list[BenchModel], list[str]]:
    from bench.e2e_models import demo_model, text_model

    models, notes = (
        [],
        [
            "vs_celery_batches not run: the product itself batches with celery-batches; "
            "per_request (one request per task message through the product) stands in"
        ],
    )
    if choice in ("demo", "both"):
        models.append(demo_model())
    if choice in ("minilm", "both"):
        text, why = text_model()
        if text is None:
            notes.append(str(why))
        else:
            models.append(text)
    if not models:
        console.print(f"[red]error:[/] no model to run ({notes[-1]})")
        raise typer.Exit(2)
    return models, notes


def _report(
    plan: Plan,
    settings: Settings,
    arms: dict[str, Any],
    context: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    values = ratios(arms)
    return {
        "benchmark": "e2e",
        "machine": context.pop("machine"),
        "settings": {
            "rows": plan.rows,
            "reps": plan.reps,
            "seconds": plan.seconds,
            "chunk_size": plan.chunk,
            "worker_prefetch": settings.broker.worker_prefetch,
            "worker_flush_interval_s": settings.broker.worker_flush_interval_s,
            "max_wait_ms": settings.batching.max_wait_ms,
            **context,
            "setup": SETUP,
        },
        "arms": arms,
        "ratios": values,
        "targets": {k: {"target": t, "met": _met(values[k], t)} for k, t in TARGETS.items()},
        "lost_rows": _lost(arms),
        "notes": notes,
    }


def _met(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def print_report(report: dict[str, Any]) -> None:
    """The same figures as the JSON, as two tables."""
    table = Table("model", "arm", "rows/s (median)", "reps", "lost", title="e2e arms")
    for group, value in report["arms"].items():
        entries = value.items() if "rows_per_s" not in value else [(group, value)]
        model = "-" if "rows_per_s" in value else group
        for arm, figures in entries:
            table.add_row(
                model,
                arm,
                f"{figures['rows_per_s']:,.0f}",
                str(len(figures["reps"])),
                str(figures["lost"]),
            )
    console.print(table)
    ratio_table = Table("ratio", "value", "target", "met", title="e2e ratios")
    for key, value in report["ratios"].items():
        target = report["targets"].get(key, {})
        met = target.get("met")
        ratio_table.add_row(
            key,
            "n/a" if value is None else f"{value:,.3g}" if value < 1000 else f"{value:,.0f}",
            f"≥ {target['target']:,}" if target else "",
            "" if met is None else ("yes" if met else "[red]no[/]"),
        )
    console.print(ratio_table)
    for note in report["notes"]:
        console.print(f"note: {note}")
